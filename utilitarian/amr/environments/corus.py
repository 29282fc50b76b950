"""Execution environment `generic_corus` (also `generic_corus_meter`): Itron/Actaris Corus gas
volume converters over I-FLAG, with the platform's documented task calls and kwargs.

Each session reads the firmware's parameter map id first (0x5E) and picks the map and database
layouts for it. Database records become readings at their end time (device local time, placed at
their UTC instant; the repeated autumn hour by the records' order), one per numeric field, with
pulse-counting fields scaled by the input pulse weight. Records are answered newest first.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.errors import MeterProtocolError, MeterUnsupported
from utilitarian.amr.protocols import corus_frames as cf
from utilitarian.amr.protocols.corus import CorusSession
from utilitarian.amr.protocols.corus_maps import (KNOWN_PARAMETERS, LAYOUTS, MAP_ID_PARAMETER,
                                                  NOT_READINGS, PARAMETER_MAPS, PULSE_WEIGHT_PARAMETER,
                                                  TEXT_PARAMETERS, map_id_of, unit_of)
from utilitarian.amr.protocols.local_time import LocalStamp, place_descending
from utilitarian.amr.readings import PollResult, Reading, SystemEvent, decimal_string
from utilitarian.amr.target import MeterTarget

NAME = "generic_corus"
PROTOCOLS = ("corus",)  # MeterTarget.protocol values this environment drives
DEFAULT_CALL = "read_parameters"  # what `utilitarian read` runs without --call
DEFAULT_KWARGS = {"read_parameters": {"parameters": ["index_unconverted", "index_converted"]}}
UTC = timezone.utc


def _parameter_map(session: CorusSession) -> tuple[str, dict[str, tuple[int, str]]]:
    (text,) = session.read([(MAP_ID_PARAMETER, "string")])
    map_id = map_id_of(text or "")
    if map_id not in PARAMETER_MAPS:
        raise MeterUnsupported(f"{session.where}: Corus parameter map {text!r} is not known "
                               f"(known: {', '.join(sorted(PARAMETER_MAPS))})")
    return map_id, PARAMETER_MAPS[map_id]


def _device_time(session: CorusSession, params: dict, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """(local naive, UTC) of the device clock."""
    (local,) = session.read([params["datetime"]])
    if local is None:
        raise MeterProtocolError(f"{session.where}: device has no clock value")
    return local, local.replace(tzinfo=tz).astimezone(UTC)


def read_parameters(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    with CorusSession(target) as session:
        map_id, params = _parameter_map(session)
        wanted = kwargs["parameters"]
        missing = [p for p in wanted if p not in params]
        if missing:
            raise MeterUnsupported(f"{session.where}: parameter map {map_id} has no "
                                   f"{', '.join(missing)}")
        values = session.read([params[p] for p in wanted])
    stamp = now.replace(microsecond=0)
    readings, texts = [], []
    for name, value in zip(wanted, values):
        if value is None:
            texts.append(f"{name}: no value")
        elif name in TEXT_PARAMETERS or isinstance(value, (str, datetime)):
            texts.append(f"{name}={value.isoformat(sep=' ') if isinstance(value, datetime) else value}")
        else:
            readings.append(Reading(name, stamp, decimal_string(Decimal(value)), unit_of(name)))
    events = (SystemEvent.truncated("Corus parameters", "; ".join(texts)),) if texts else ()
    return PollResult(tuple(readings), events)


def records_to_readings(records: list[bytes], fields, pulse_weight: Decimal, tz: ZoneInfo,
                        low: datetime | None = None, high: datetime | None = None) -> PollResult:
    """Readings of raw records (newest first), kept between `low` and `high` (UTC, inclusive)."""
    decoded, stamps, bad = [], [], 0
    for raw in records:
        try:
            values, pos = {}, 0
            for f in fields:
                size = cf.LENGTHS[f.kind]
                values[f.name] = cf.decode(f.kind, raw[pos:pos + size])
                pos += size
        except MeterProtocolError:
            values = None
        end = values.get("end_date") if values else None
        decoded.append(values)
        stamps.append(LocalStamp(end) if isinstance(end, datetime) else None)
    readings, flagged, seen = [], 0, set()
    for values, instant in zip(decoded, place_descending(stamps, tz)):
        if values is None or instant is None or instant in seen:
            bad += 1     # no valid end date, or the same one as a newer record: never two values on a key
            continue
        seen.add(instant)
        if (low and instant < low) or (high and instant > high):
            continue
        if values.get("status"):
            flagged += 1
        for f in fields:
            value = values[f.name]
            if f.name in NOT_READINGS or f.kind in ("date", "null2", "null4") or value is None:
                continue
            number = Decimal(value)
            if f.pulses:
                number *= pulse_weight
            if f.divisor != 1:
                number /= f.divisor
            readings.append(Reading(f.name, instant, decimal_string(number), unit_of(f.name)))
    events = []
    if bad:
        events.append(SystemEvent.truncated("Database records skipped",
                                            f"{bad} of {len(records)} records had no valid end date "
                                            "or repeated a newer record's"))
    if flagged:
        events.append(SystemEvent.truncated("Database record status",
                                            f"{flagged} records carry a non-zero status"))
    return PollResult(tuple(readings), tuple(events))


def _read_database(session: CorusSession, database: str, tz: ZoneInfo, params: dict,
                   low: datetime | None, high: datetime | None) -> PollResult:
    (weight,) = session.read([(PULSE_WEIGHT_PARAMETER, params["input_pulse_weight"][1])])
    if weight is None or weight <= 0:
        raise MeterProtocolError(f"{session.where}: input pulse weight {weight!r} is not usable")
    local = (lambda m: m.astimezone(tz).replace(tzinfo=None) if m else None)
    size, records = session.read_database(database, local(high), local(low))
    if not records:
        return PollResult()
    fields = LAYOUTS[database].get(size)
    if fields is None:
        raise MeterUnsupported(f"{session.where}: no known layout for {database} records of {size} bytes "
                               f"(known: {', '.join(map(str, sorted(LAYOUTS[database])))})")
    return records_to_readings(records, fields, weight, tz, low, high)


def _aware(moment: datetime | None, tz: ZoneInfo) -> datetime | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=tz)).astimezone(UTC)


def read_database(target: MeterTarget, kwargs: dict, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    start, end = _aware(kwargs["start_date"], tz), _aware(kwargs["end_date"], tz)
    # The platform's docs describe start_date both as the newest and as the oldest record; the
    # range between the two dates is what either reading means. start_date alone: from it on.
    low, high = (min(start, end), max(start, end)) if start and end else (start, end)
    with CorusSession(target) as session:
        _map_id, params = _parameter_map(session)
        return _read_database(session, kwargs["database"], tz, params, low, high)


def read_database_by_offset_seconds(target: MeterTarget, kwargs: dict, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    with CorusSession(target) as session:
        _map_id, params = _parameter_map(session)
        _local, device_now = _device_time(session, params, tz)
        low = device_now - timedelta(seconds=kwargs["offset_seconds"])
        return _read_database(session, kwargs["database"], tz, params, low, None)


def set_time(target: MeterTarget, kwargs: dict, *, clock: datetime, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    started = time.monotonic()
    with CorusSession(target) as session:
        _map_id, params = _parameter_map(session)
        _local, device_now = _device_time(session, params, tz)
        drift = (device_now - (clock + timedelta(seconds=time.monotonic() - started))).total_seconds()
        # The device clock has whole seconds: less than a second is no drift.
        if abs(drift) <= max(kwargs["allowed_drift_seconds"], 1.0):
            return PollResult()
        corrected = (clock + timedelta(seconds=time.monotonic() - started)).astimezone(tz)
        ident, kind = params["datetime"]
        session.write([(ident, cf.encode(kind, corrected.replace(tzinfo=None, microsecond=0)))])
    direction = "ahead" if drift > 0 else "behind"
    content = (f"device clock was {abs(drift):.1f} s {direction}; set to "
               f"{corrected.strftime('%Y-%m-%d %H:%M:%S')} ({target.timezone})")
    return PollResult((), (SystemEvent.truncated("Time adjusted", content),))


_DATABASE = Param("database", "str", required=True, choices=tuple(cf.DATABASES),
                  doc="interval, hourly, daily or monthly")
CALLS = {
    "read_parameters": Call("read_parameters", read_parameters, (
        Param("parameters", "str_list", required=True, choices=KNOWN_PARAMETERS,
              doc="names from the platform's list (index_converted, datetime, battery_days, ...)"),
    ), "current values of the named parameters, in one request"),
    "read_database": Call("read_database", read_database, (
        Param("start_date", "datetime", doc="one end of the range (ISO 8601; naive = meter time)"),
        Param("end_date", "datetime", doc="the other end (default: up to the latest record)"),
        _DATABASE,
    ), "database records between the two dates (the device answers newest first)"),
    "read_database_by_offset_seconds": Call(
        "read_database_by_offset_seconds", read_database_by_offset_seconds, (
            Param("offset_seconds", "number", required=True, minimum=1,
                  doc="records of the device's last N seconds (by its own clock)"),
            _DATABASE,
        ), "database records of the last offset_seconds"),
    "set_time": Call("set_time", set_time, (
        Param("allowed_drift_seconds", "float", default=10.0, minimum=0.0,
              doc="correct only a clock further off than this (10)"),
    ), "read the device clock; write the server's time if it is off by more than allowed"),
}
# The platform's docs list read_database as "read_database_by_date" in one place.
CALL_ALIASES = {"read_database_by_date": "read_database"}
