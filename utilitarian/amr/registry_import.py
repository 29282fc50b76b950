"""Meter lists (CSV or TOML) to validated registry entries: every row is checked and every bad row is
reported with its line number before anything is written. Passwords never appear in messages.

TOML: `[[meters]]` tables (what `utilitarian simulate --meters-out` writes), optionally
`[[amr_tasks]]` and `[[amr_task_groups]]`. CSV: a header row with the same column names; list
columns (series, groups, tasks) separate items with spaces, ';' or '|'.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import sys
from dataclasses import dataclass

from utilitarian.amr.model import AmrTask, AmrTaskGroup, MeterEntry
# Known and check_meter_row are imported from here by the commands and tests.
from utilitarian.amr.registry_rows import Known, check_meter_row, check_task_table, list_of
from utilitarian.errors import EX_DATAERR, UtilitarianError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ImportErrors(UtilitarianError):
    """Bad rows of a meter list; nothing was written."""

    exit_code = EX_DATAERR

    def __init__(self, file: str, problems: list[tuple[int | None, str]]):
        self.file = file
        self.problems = sorted(problems, key=lambda p: (p[0] or 0))
        lines = [f"{file}:{line}: {text}" if line else f"{file}: {text}" for line, text in self.problems]
        rows = len({p[0] for p in self.problems})
        super().__init__(f"{len(self.problems)} problem(s) in {rows} row(s); nothing was imported\n"
                         + "\n".join(lines))


@dataclass(frozen=True)
class MeterList:
    entries: tuple[MeterEntry, ...]
    tasks: tuple[AmrTask, ...] = ()
    groups: tuple[AmrTaskGroup, ...] = ()




def _table_lines(text: str, header: str) -> list[int]:
    """Line numbers of the `[[header]]` tables, in order (tomllib keeps no positions)."""
    pattern = re.compile(r"^\s*\[\[\s*" + re.escape(header) + r"\s*\]\]")
    return [n for n, line in enumerate(text.splitlines(), start=1) if pattern.match(line)]


def read_rows(path: str) -> tuple[list[tuple[int | None, dict]], list[tuple[int | None, dict]],
                                   list[tuple[int | None, dict]]]:
    """(meter rows, task tables, group tables), each with the line it starts on."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImportErrors(path, [(None, f"cannot read: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportErrors(path, [(None, "not UTF-8 text")]) from None
    if path.lower().endswith(".json"):
        from utilitarian.amr.platform_export import rows_from_export

        return rows_from_export(path, text)
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        rows = []
        start = 2
        for record in reader:
            extra = record.pop(None, None)
            row = {k.strip(): v for k, v in record.items() if k}
            if extra:
                row["<extra>"] = extra
            rows.append((start, row))
            start = reader.line_num + 1
        if reader.fieldnames is None:
            raise ImportErrors(path, [(1, "empty file: expected a header row")])
        return rows, [], []
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImportErrors(path, [(None, f"invalid TOML: {exc}")]) from None
    out = []
    for key in ("meters", "amr_tasks", "amr_task_groups"):
        tables = doc.get(key, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ImportErrors(path, [(None, f"{key} must be an array of tables ([[{key}]])")])
        lines = _table_lines(text, key)
        out.append([(lines[i] if i < len(lines) else None, t) for i, t in enumerate(tables)])
    unknown = sorted(set(doc) - {"meters", "amr_tasks", "amr_task_groups"})
    if unknown:
        raise ImportErrors(path, [(None, f"unknown top-level key(s) {', '.join(unknown)}; "
                                         "expected [[meters]], [[amr_tasks]], [[amr_task_groups]]")])
    return out[0], out[1], out[2]


def load_meter_list(path: str, known: Known) -> MeterList:
    """Read and validate a whole file; raises ImportErrors listing every bad row."""
    meter_rows, task_rows, group_rows = read_rows(path)
    problems: list[tuple[int | None, str]] = []
    tasks, groups, entries = [], [], []
    for line, raw in task_rows:
        task, errors = check_task_table(raw)
        problems += [(line, f"amr_tasks {raw.get('name', '?')!r}: {e}") for e in errors]
        if task:
            tasks.append(task)
    task_names = frozenset(known.amr_tasks | {t.name for t in tasks})
    for line, raw in group_rows:
        name, members = raw.get("name"), list_of(raw.get("tasks")) or ()
        if not isinstance(name, str) or not name.strip():
            problems.append((line, "amr_task_groups: name: is required"))
            continue
        missing = [t for t in members if t not in task_names]
        if missing:
            problems.append((line, f"amr_task_groups {name!r}: no AMR task named {', '.join(map(repr, missing))}"))
            continue
        groups.append(AmrTaskGroup(name.strip(), members))
    known = dataclasses.replace(known, amr_tasks=task_names)
    if not meter_rows and not tasks and not groups:
        problems.append((None, "no meters in the file"))
    first_line: dict[str, int | None] = {}
    blocking: dict[tuple[str, int | None], tuple[bool, int | None]] = {}
    for line, row in meter_rows:
        if "<extra>" in row:
            problems.append((line, "more cells than header columns"))
            continue
        entry, errors = check_meter_row(row, known)
        label = f"meter {row.get('name')!r}" if row.get("name") else "meter"
        problems += [(line, f"{label}: {e}") for e in errors]
        if entry is None:
            continue
        name = entry.device.name
        if name in first_line:
            problems.append((line, f"{label}: name already used on line {first_line[name]}"))
            continue
        first_line[name] = line
        iface = entry.device.interface
        if iface is not None:
            key = (iface.host, iface.port)
            seen = blocking.setdefault(key, (iface.can_block, line))
            if seen[0] != iface.can_block:
                problems.append((line, f"{label}: interface {iface.name} has can_block={str(iface.can_block).lower()} "
                                       f"here but {str(seen[0]).lower()} on line {seen[1]}"))
                continue
        entries.append(entry)
    problems += _attachment_problems(entries, first_line, tasks, groups, known)
    if problems:
        raise ImportErrors(path, problems)
    return MeterList(tuple(entries), tuple(tasks), tuple(groups))


def _attachment_problems(entries, first_line, tasks, groups, known: Known) -> list[tuple[int | None, str]]:
    """A task whose execution type differs from its meter's (directly or through a group) would
    be left out of every round: refuse it here, naming both."""
    from utilitarian.amr.target import parse_meter_url
    from utilitarian.amr.task_checks import check_attachment

    by_name = dict(known.task_objects or {})
    by_name.update({t.name: t for t in tasks})
    group_tasks = dict(known.group_tasks or {})
    group_tasks.update({g.name: g.tasks for g in groups})
    out = []
    for entry in entries:
        device = entry.device
        names = set(entry.tasks or ()) | {t for g in entry.groups or () for t in group_tasks.get(g, ())}
        protocol = parse_meter_url(device.url).protocol
        for name in sorted(names):
            task = by_name.get(name)
            if task is not None and (problem := check_attachment(task, device.name, device.execution_type, protocol)):
                out.append((first_line.get(device.name), problem))
    return out


def known_execution_types() -> frozenset[str] | None:
    try:
        from utilitarian.amr.environments import EXECUTION_TYPE_ALIASES, EXECUTION_TYPES
    except ImportError:
        return None
    return frozenset(EXECUTION_TYPES) | frozenset(EXECUTION_TYPE_ALIASES)
