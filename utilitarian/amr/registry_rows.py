"""One meter row or one AMR task table of a meter list, checked field by field: every problem is
named (column and reason) so registry_import.py can report them all with their line numbers before
anything is written. Passwords never appear in messages.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable

from utilitarian import queues
from utilitarian.amr.model import AmrTask, MeterDevice, MeterDeviceConfig, MeterEntry, NetworkInterface
from utilitarian.errors import ConfigError

METER_COLUMNS = ("name", "url", "execution_type", "meter_type", "type", "config", "interface", "can_block",
                 "timezone", "password", "series", "groups", "tasks", "active",
                 # the platform's identifiers (v4); platform_record: its API export of the meter
                 "uuid", "organization", "external_system_reference", "manufacturer_serial",
                 "ct_ratio", "vt_ratio", "platform_record")
TASK_KEYS = ("name", "schedule", "task_call", "meter_execution_type", "execution_type", "task_kwargs",
             "run_offset_seconds", "is_active", "uuid", "description")
_LIST_SPLIT = re.compile(r"[\s;|,]+")
_TRUE, _FALSE = {"1", "true", "yes", "on", "y"}, {"0", "false", "no", "off", "n", ""}


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


def list_of(value: Any) -> tuple[str, ...] | None:
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
    series = field_("series", list_of) or ()
    groups = field_("groups", list_of)
    tasks = field_("tasks", list_of)
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
