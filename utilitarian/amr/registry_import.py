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
from typing import Any, Callable

from utilitarian import queues
from utilitarian.amr.model import AmrTask, AmrTaskGroup, MeterDevice, MeterDeviceConfig, MeterEntry, NetworkInterface
from utilitarian.errors import EX_DATAERR, ConfigError, UtilitarianError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

METER_COLUMNS = ("name", "url", "execution_type", "meter_type", "type", "config", "interface", "can_block",
                 "timezone", "password", "series", "groups", "tasks", "active",
                 # the platform's identifiers (v4); platform_record: its API export of the meter
                 "uuid", "organization", "external_system_reference", "manufacturer_serial",
                 "ct_ratio", "vt_ratio", "platform_record")
TASK_KEYS = ("name", "schedule", "task_call", "meter_execution_type", "execution_type", "task_kwargs",
             "run_offset_seconds", "is_active", "uuid", "description")
_LIST_SPLIT = re.compile(r"[\s;|,]+")
_TRUE, _FALSE = {"1", "true", "yes", "on", "y"}, {"0", "false", "no", "off", "n", ""}


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


@dataclass(frozen=True)
class Known:
    """What rows may refer to besides the file itself (from the store and the config)."""

    amr_tasks: frozenset[str] = frozenset()
    meter_types: Any = None              # Mapping name -> MeterType, or None to skip the check
    execution_types: frozenset[str] | None = None
    task_objects: Any = None             # name -> AmrTask of the store, to check attachments
    group_tasks: Any = None              # group name -> task names in the store


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be true or false")


def _list(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        text = str(value).strip()
        if not text:
            return None
        items = _LIST_SPLIT.split(text)
    return tuple(i for i in items if i)


def _timezone(name: str) -> str:
    import zoneinfo

    if not isinstance(name, str):
        raise ValueError(f"must be a time zone name in quotes, not {name!r}")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def _interface(text: str, can_block: bool) -> NetworkInterface:
    text = text.strip()
    if text.startswith("/"):
        return NetworkInterface(text, None, can_block)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port or a device path")
    return NetworkInterface(host, int(port), can_block)


def check_meter_row(row: dict, known: Known) -> tuple[MeterEntry | None, list[str]]:
    """One row to an entry, or the reasons it is bad (all of them)."""
    from utilitarian.amr.target import parse_meter_url

    errors: list[str] = []

    def field_(key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        raw = row.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            errors.append(f"{key}: {exc}")
            return default

    unknown = sorted(set(row) - set(METER_COLUMNS))
    if unknown:
        errors.append(f"unknown column(s) {', '.join(unknown)}; known: {', '.join(METER_COLUMNS)}")
    name = field_("name", lambda v: _plain(v, "name"))
    if not name:
        errors.append("name: is required")
    url = field_("url", lambda v: str(v).strip())
    password = field_("password", str)
    target = None
    if not url:
        errors.append("url: is required")
    else:
        try:
            target = parse_meter_url(url, secret=password)
        except ConfigError as exc:
            errors.append(f"{exc.key or 'url'}: {exc.reason}")
    execution_type = field_("execution_type", lambda v: _plain(v, "execution_type"))
    if not execution_type:
        errors.append("execution_type: is required")
    elif known.execution_types is not None and execution_type not in known.execution_types:
        errors.append(f"execution_type: unknown {execution_type!r}; known: {', '.join(sorted(known.execution_types))}")
    meter_type = field_("meter_type", lambda v: _plain(v, "meter_type")) or (target.meter_type if target else None)
    if (meter_type and known.meter_types is not None and execution_type == "generic_modbus"
            and meter_type not in known.meter_types):
        errors.append(f"meter_type: unknown Modbus meter type {meter_type!r}")
    can_block = field_("can_block", _bool, False)
    timezone = field_("timezone", _timezone, "UTC")
    series = field_("series", _list) or ()
    groups = field_("groups", _list)
    tasks = field_("tasks", _list)
    for task_name in tasks or ():
        if task_name not in known.amr_tasks:
            errors.append(f"tasks: no AMR task named {task_name!r} (add it with `utilitarian amr-tasks add` "
                          "or an [[amr_tasks]] table)")
    active = field_("active", _bool, True)
    iface_text = field_("interface", str)
    interface = None
    if iface_text:
        try:
            interface = _interface(iface_text, bool(can_block))
        except ValueError as exc:
            errors.append(f"interface: {exc}")
    elif target is not None:
        interface = _interface(target.interface, bool(can_block))
    uuid_text = field_("uuid", _uuid)
    organization = field_("organization", lambda v: _plain(v, "organization"))
    reference = field_("external_system_reference", lambda v: _plain(v, "external_system_reference"))
    serial = field_("manufacturer_serial", lambda v: _plain(v, "manufacturer_serial"))
    ct_ratio = field_("ct_ratio", _ratio)
    vt_ratio = field_("vt_ratio", _ratio)
    record = field_("platform_record", str)
    type_name = field_("type", lambda v: _plain(v, "type")) or meter_type or execution_type
    config_name = field_("config", lambda v: _plain(v, "config")) or f"{type_name}/{timezone}"
    if errors or target is None:
        return None, errors
    clean_url = dataclasses.replace(target, password=None).to_url()
    units: dict[str, str | None] = {}
    if meter_type and known.meter_types and meter_type in known.meter_types:
        units = {spec.series: spec.unit for spec in known.meter_types[meter_type].registers}
    device = MeterDevice(name=name, url=clean_url, execution_type=execution_type, type_name=type_name,
                         config=MeterDeviceConfig(config_name, timezone, tuple(sorted(set(series)))),
                         interface=interface, meter_type=meter_type, is_active=bool(active),
                         password=password if password is not None else target.password,
                         uuid=uuid_text, organization=organization, external_system_reference=reference,
                         manufacturer_serial=serial, ct_ratio=ct_ratio, vt_ratio=vt_ratio,
                         platform_record=record)
    return MeterEntry(device, {s: units.get(s) for s in series}, groups, tasks), []


def _uuid(value: Any) -> str:
    import uuid

    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise ValueError(f"{str(value)[:40]!r} is not a UUID") from None


def _ratio(value: Any) -> str | None:
    """A transformer ratio as decimal text (400/5 = 80); 1 means none."""
    from decimal import Decimal, InvalidOperation

    from utilitarian.amr.readings import decimal_string

    if isinstance(value, bool):
        raise ValueError("must be a positive number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{str(value)[:20]!r} is not a number") from None
    if not number.is_finite() or number <= 0:
        raise ValueError("must be a positive number")
    return None if number == 1 else decimal_string(number)


def _plain(value: Any, key: str) -> str:
    text = str(value).strip()
    if not text or len(text) > 200 or any(ord(c) < 32 for c in text):
        raise ValueError("must be 1-200 printable characters")
    return text


def check_task_table(raw: dict) -> tuple[AmrTask | None, list[str]]:
    """One [[amr_tasks]] table (or a task of the platform's export) to an AmrTask, or every reason
    it is bad, including what a worker would refuse (execution type, task_call, kwargs, offset)."""
    from utilitarian.amr.environments import validate_task_call
    from utilitarian.amr.errors import BadTaskCall
    from utilitarian.amr.task_checks import check_run_offset

    errors = []
    unknown = sorted(set(raw) - set(TASK_KEYS))
    if unknown:
        errors.append(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(TASK_KEYS)}")
    name, schedule, call = raw.get("name"), raw.get("schedule"), raw.get("task_call")
    etype = raw.get("meter_execution_type") or raw.get("execution_type")
    for key, value in (("name", name), ("task_call", call), ("meter_execution_type", etype)):
        if not isinstance(value, str) or not value.strip():
            errors.append(f"{key}: is required (text)")
    if not isinstance(schedule, str) or schedule not in queues.SCHEDULE_QUEUES:
        errors.append(f"schedule: must be one of {', '.join(queues.SCHEDULE_QUEUES)} (not {schedule!r})")
    kwargs = raw.get("task_kwargs", {})
    if not isinstance(kwargs, dict):
        errors.append("task_kwargs: must be a table")
    offset = raw.get("run_offset_seconds", 0.0)
    if (problem := check_run_offset(schedule if isinstance(schedule, str) else "", offset)) is not None:
        errors.append(problem)
    active = raw.get("is_active", True)
    if not isinstance(active, bool):
        errors.append("is_active: must be true or false")
    task_uuid, description = raw.get("uuid"), raw.get("description")
    if task_uuid is not None:
        try:
            task_uuid = _uuid(task_uuid)
        except ValueError as exc:
            errors.append(f"uuid: {exc}")
    if description is not None and not isinstance(description, str):
        errors.append("description: must be text")
    if isinstance(call, str) and isinstance(etype, str) and call.strip() and etype.strip() \
            and isinstance(kwargs, dict):
        try:  # what a worker would refuse: execution type, task_call, kwargs
            validate_task_call(etype.strip(), call.strip(), kwargs)
        except BadTaskCall as exc:
            errors.append(exc.message)
    if errors:
        return None, errors
    return AmrTask(name.strip(), schedule, call.strip(), etype.strip(), dict(kwargs), float(offset), active,
                   uuid=task_uuid, description=description), []


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
        name, members = raw.get("name"), _list(raw.get("tasks")) or ()
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
