"""The layout rules of issue 10, checked on the source so they stay true: the arbiter stays small,
`TaskCall` lives with the tasks (no app <-> tasks import cycle), exit codes come from
utilitarian.errors, and every subcommand module registers the same way."""

from __future__ import annotations

import ast
import pathlib

import utilitarian

ROOT = pathlib.Path(utilitarian.__file__).parent
SYSEXITS = set(range(64, 79)) | {130}


def module_imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_supervisor_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "supervisor").glob("*.py")}
    assert sizes["arbiter.py"] < 400
    assert max(sizes.values()) <= 400, sizes


def test_task_call_lives_with_the_tasks_and_app_is_not_imported_by_them():
    from utilitarian import app, tasks

    assert app.TaskCall is tasks.TaskCall and tasks.TaskCall.__module__ == "utilitarian.tasks"
    assert not {m for m in module_imports(ROOT / "tasks.py") if m.startswith("utilitarian.app")}


def _name(node) -> str:
    return getattr(node, "attr", getattr(node, "id", ""))


def _is_exit_code(node) -> bool:
    """`code == 78`, `proc.returncode != 0`, `main(...) == 64`; not `register_type == 0x40`."""
    if isinstance(node, ast.Call):
        return _name(node.func) in {"main", "wait", "run", "poll"}
    name = _name(node).lower()
    return "code" in name or "exit" in name or name in {"rc", "status"}


def _literal_exit_codes(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    command = path.parent.name == "commands" or path.name == "cli.py"
    found = []
    for node in ast.walk(tree):
        values = []
        if isinstance(node, ast.Return) and node.value is not None:
            values = [node.value] + ([node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) else [])
        elif isinstance(node, ast.Compare) and _is_exit_code(node.left):
            values = list(node.comparators)
        elif isinstance(node, ast.Call) and _name(node.func) in {"exit", "_exit"}:
            values = list(node.args)
        elif isinstance(node, ast.Assign) and any(_name(t) in {"code", "exit_code"} for t in node.targets):
            values = [node.value]
        for v in values:
            if isinstance(v, ast.Constant) and type(v.value) is int:
                if v.value in SYSEXITS or (command and v.value != 0 and not isinstance(node, ast.Compare)):
                    found.append(f"{path.relative_to(ROOT)}:{v.lineno}: {v.value}")
    return found


def test_exit_codes_come_from_errors_py():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name != "errors.py":
            offenders += _literal_exit_codes(path)
    assert offenders == []


def test_every_subcommand_module_registers_the_same_way():
    for path in sorted((ROOT / "commands").glob("*_cmd.py")):
        tree = ast.parse(path.read_text())
        register = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "register"]
        assert register and [a.arg for a in register[0].args.args] == ["sub", "parent"], path.name
        text = path.read_text()
        assert "action_handler" not in text and "def dispatch" not in text, path.name
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "add_subparsers":
                kw = {k.arg: k.value for k in call.keywords}
                assert isinstance(kw.get("required"), ast.Constant) and kw["required"].value is True, path.name
