"""Execution environment `generic_dlms`: registers with scaler and unit, the load profile by range,
the clock (read, set) of DLMS/COSEM meters over the TCP wrapper or HDLC.

Series are OBIS codes without the F group when it is 255 (`1-0:1.8.0`), unless `series` maps them.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.errors import BadTaskCall, MeterProtocolError
from utilitarian.amr.protocols import dlms_objects as o
from utilitarian.amr.protocols.dlms import DlmsSession
from utilitarian.amr.protocols.dlms_apdu import DataAccessError
from utilitarian.amr.protocols.dlms_axdr import parse_obis, short_obis
from utilitarian.amr.readings import PollResult, Reading, SystemEvent
from utilitarian.amr.target import MeterTarget

NAME = "generic_dlms"
PROTOCOLS = ("dlms",)  # MeterTarget.protocol values this environment drives
DEFAULT_CALL = "read_registers"  # what `utilitarian read` runs without --call
DEFAULT_KWARGS = {"read_registers": {"registers": ["1-0:1.8.0", "1-0:2.8.0"]}}
CLASSES = (o.DATA, o.REGISTER, o.EXTENDED_REGISTER, o.DEMAND_REGISTER)
MAX_PROFILE_ROWS = 50_000


def _obis_list(call: str, texts: list[str]) -> list[bytes]:
    names = []
    for text in texts:
        try:
            names.append(parse_obis(text))
        except ValueError as exc:
            raise BadTaskCall(NAME, call, str(exc)) from None
    return names


def _series_map(call: str, mapping: dict | None) -> dict[bytes, str]:
    if not mapping:
        return {}
    return dict(zip(_obis_list(call, list(mapping)), mapping.values()))


def read_registers(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    names = _obis_list("read_registers", kwargs["registers"])
    series = _series_map("read_registers", kwargs["series"])
    class_id = kwargs["class_id"]
    if class_id not in CLASSES:
        raise BadTaskCall(NAME, "read_registers", f"class_id must be one of {', '.join(map(str, CLASSES))}")
    stamp = now.replace(microsecond=0)
    readings, events = [], []
    with DlmsSession(target) as session:
        for obis in names:
            label = short_obis(obis)
            try:
                value = session.get_value(class_id, obis, 2, what=f"{label} value")
                scaler = o.ScalerUnit()
                if class_id != o.DATA:
                    scaler = o.parse_scaler_unit(session.get_value(class_id, obis, 3, what=f"{label} scaler_unit"),
                                                 label)
                number = o.scaled(value, scaler, label)
            except DataAccessError as exc:
                # One unknown object must not cost the others; the operator sees which.
                events.append(SystemEvent.truncated("Object not readable", exc.message))
                continue
            readings.append(Reading(series.get(obis, label), stamp, number, scaler.unit))
    return PollResult(tuple(readings), tuple(events))


def _window(target: MeterTarget, kwargs: dict, now: datetime) -> tuple[datetime, datetime]:
    zone = ZoneInfo(target.timezone)
    if kwargs.get("offset_seconds") is not None:
        return now - timedelta(seconds=kwargs["offset_seconds"]), now
    start, end = kwargs["start"], kwargs["end"] or now
    start = start if start.tzinfo else start.replace(tzinfo=zone)
    end = end if end.tzinfo else end.replace(tzinfo=zone)
    if end <= start:
        raise BadTaskCall(NAME, "read_load_profile", "end must be after start")
    return start, end


def read_load_profile(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    if kwargs["start"] is None and kwargs["offset_seconds"] is None:
        raise BadTaskCall(NAME, "read_load_profile", "give start (and end) or offset_seconds")
    zone = ZoneInfo(target.timezone)
    profile = _obis_list("read_load_profile", [kwargs["profile"]])[0]
    series = _series_map("read_load_profile", kwargs["series"])
    start, end = _window(target, kwargs, now)
    with DlmsSession(target) as session:
        columns = o.parse_capture_objects(session.get_value(o.PROFILE_GENERIC, profile, 3, what="capture objects"))
        clock_at = next((i for i, c in enumerate(columns) if c.class_id == o.CLOCK and c.attribute == 2), None)
        if clock_at is None:
            raise MeterProtocolError(f"{target.interface}: profile {short_obis(profile)} captures no clock")
        scalers: dict[int, o.ScalerUnit] = {}
        for index, column in enumerate(columns):
            wanted = column.obis in series if series else column.class_id in (3, 4, 5) and column.attribute == 2
            if not wanted or index == clock_at:
                continue
            scalers[index] = o.ScalerUnit()
            if column.class_id in (3, 4, 5):
                scalers[index] = o.parse_scaler_unit(
                    session.get_value(column.class_id, column.obis, 3, what=f"{column.name} scaler_unit"),
                    column.name)
        rows = session.get_value(o.PROFILE_GENERIC, profile, 2,
                                 o.range_descriptor(start, end, zone, columns[clock_at]), what="profile buffer")
    if not isinstance(rows, list):
        raise MeterProtocolError(f"{target.interface}: profile buffer is not an array")
    if len(rows) > MAX_PROFILE_ROWS:
        raise MeterProtocolError(f"{target.interface}: {len(rows)} profile rows; more than {MAX_PROFILE_ROWS}")
    readings, skipped = [], 0
    for row in rows:
        row = o.check_row(row, len(columns), "profile buffer")
        if row[clock_at] is None:
            skipped += 1   # compact profiles leave the clock out of evenly spaced rows; not supported
            continue
        stamp = o.clock_value(row[clock_at], zone, "profile row clock")
        for index, scaler in scalers.items():
            if row[index] is None:
                continue
            column = columns[index]
            readings.append(Reading(series.get(column.obis, column.name), stamp,
                                    o.scaled(row[index], scaler, column.name), scaler.unit))
    events = ()
    if skipped:
        events = (SystemEvent.truncated("Profile rows skipped",
                                        f"{skipped} of {len(rows)} rows had no clock value"),)
    return PollResult(tuple(readings), events)


def _meter_clock(session: DlmsSession, zone) -> datetime:
    return o.clock_value(session.get_value(o.CLOCK, o.CLOCK_OBIS, 2, what="clock"), zone)


def read_clock(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    zone = ZoneInfo(target.timezone)
    started = time.monotonic()
    with DlmsSession(target) as session:
        meter_now = _meter_clock(session, zone)
    true_now = now + timedelta(seconds=time.monotonic() - started)
    drift = (meter_now - true_now).total_seconds()
    return PollResult((Reading(kwargs["series"], now.replace(microsecond=0), f"{drift:.2f}", "s"),))


def set_time(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    zone = ZoneInfo(target.timezone)
    started = time.monotonic()
    with DlmsSession(target) as session:
        meter_now = _meter_clock(session, zone)
        drift = (meter_now - (now + timedelta(seconds=time.monotonic() - started))).total_seconds()
        if abs(drift) <= kwargs["allowed_drift_seconds"]:
            return PollResult()
        corrected = (now + timedelta(seconds=time.monotonic() - started)).astimezone(zone)
        session.set(o.CLOCK, o.CLOCK_OBIS, 2, o.clock_data(corrected, zone), what="set clock")
    direction = "ahead" if drift > 0 else "behind"
    content = (f"meter clock was {abs(drift):.1f} s {direction}; set to "
               f"{corrected.strftime('%Y-%m-%d %H:%M:%S')} ({target.timezone}) "
               f"[{corrected.astimezone(timezone.utc).isoformat()}]")
    return PollResult((), (SystemEvent.truncated("Time adjusted", content),))


CALLS = {
    "read_registers": Call("read_registers", read_registers, (
        Param("registers", "str_list", required=True),
        Param("class_id", "int", default=o.REGISTER),
        Param("series", "str_map"),
    ), "value (attribute 2) and scaler_unit (attribute 3) of each OBIS code; class_id 1 reads Data objects"),
    "read_load_profile": Call("read_load_profile", read_load_profile, (
        Param("start", "datetime"),
        Param("end", "datetime"),
        Param("offset_seconds", "float", minimum=1.0),
        Param("profile", "str", default="1-0:99.1.0*255"),
        Param("series", "str_map"),
    ), "profile generic buffer by range on its clock column; every register column (or `series`)"),
    "read_clock": Call("read_clock", read_clock, (
        Param("series", "str", default="clock_offset"),
    ), "the meter clock's offset from true time, in seconds (positive: meter ahead)"),
    "set_time": Call("set_time", set_time, (
        Param("allowed_drift_seconds", "float", default=10.0, minimum=0.0),
    ), "read the clock (0-0:1.0.0*255); if off by more than allowed_drift_seconds, set it"),
}
