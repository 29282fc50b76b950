"""The table of execution environments, task calls and kwargs in docs/meters.md, rendered from the
Call declarations so the docs cannot drift from the code (a test compares them).

    python -m utilitarian.amr.environments.catalog    # prints the table to paste into the docs
"""

from __future__ import annotations

from utilitarian.amr.environments import EXECUTION_TYPE_ALIASES, EXECUTION_TYPES, environment
from utilitarian.amr.environments.params import Param

BEGIN, END = "<!-- task-calls:begin -->", "<!-- task-calls:end -->"


def _param(p: Param) -> str:
    text = f"`{p.name}`"
    if p.required:
        text += " (required)"
    elif p.default is not None:
        text += f" = `{p.default!r}`" if not isinstance(p.default, str) else f" = `{p.default}`"
    if p.aliases:
        text += " (alias " + ", ".join(f"`{a}`" for a in p.aliases) + ")"
    return text + (f": {p.doc}" if p.doc else "")


def render_table() -> str:
    lines = ["| execution type | task_call | task_kwargs | what it does |", "|---|---|---|---|"]
    aliases_of = {}
    for alias, name in EXECUTION_TYPE_ALIASES.items():
        aliases_of.setdefault(name, []).append(alias)
    for etype in sorted(EXECUTION_TYPES):
        module = environment(etype)
        call_aliases = getattr(module, "CALL_ALIASES", {})
        label = f"`{etype}`" + "".join(f" (also `{a}`)" for a in aliases_of.get(etype, []))
        for index, call in enumerate(module.CALLS.values()):
            name = f"`{call.name}`" + "".join(f" (also `{a}`)" for a, n in call_aliases.items() if n == call.name)
            kwargs = "<br>".join(_param(p) for p in call.params) or "none"
            lines.append(f"| {label if index == 0 else ''} | {name} | {kwargs} | {call.summary} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(BEGIN)
    print(render_table())
    print(END)
