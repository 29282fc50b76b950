"""Execution environment `generic_lis200`: Elster EK2x0 single values, archive reads and set_time.

Archive timestamps are the device's local time (the target's timezone) converted to UTC.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.errors import MeterAuthenticationError, MeterUnsupported
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.protocols.lis200 import (LOCKS, TIME_ADDRESS, Lis200Client, archive_readings,
                                              format_lis_time)
from utilitarian.amr.readings import PollResult, Reading, SystemEvent
from utilitarian.amr.target import MeterTarget

NAME = "generic_lis200"
# 62056-21 and its LIS-200 dialect share the framing
PROTOCOLS = ("lis200", "iec62056-21")  # MeterTarget.protocol values this environment drives
DEFAULT_CALL = None  # what `utilitarian read` runs without --call


def read_single_value(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    address = kwargs["address"]
    with Iec62056Session(target) as session:
        client = Lis200Client(session, ZoneInfo(target.timezone))
        client.sign_on()
        value = client.read_value(address)
    number = value.number
    if number is None:
        raise MeterUnsupported(f"{target.interface}: {address} is not numeric ({value.raw[:30]!r})")
    reading = Reading(kwargs["series"] or address, now.replace(microsecond=0), number, value.unit)
    return PollResult((reading,))


def _read_archive(target: MeterTarget, kwargs: dict, start: datetime, end: datetime | None) -> PollResult:
    tz = ZoneInfo(target.timezone)
    position = kwargs["control_position"]
    with Iec62056Session(target) as session:
        client = Lis200Client(session, tz)
        client.sign_on()
        columns = client.archive_columns(kwargs["archive"], position)
        rows = client.archive_rows(kwargs["archive"], control_position=position,
                                   start=format_lis_time(start, tz),
                                   end=format_lis_time(end, tz) if end else "",
                                   rows_per_block=kwargs["rows_per_block"])
    data = archive_readings(rows, columns, control_position=position, tz=tz, series=kwargs["series"])
    events = ()
    if data.skipped_rows:
        events = (SystemEvent.truncated(
            "Archive rows skipped",
            f"archive {kwargs['archive']}: {data.skipped_rows} of {data.rows} rows had no valid "
            f"timestamp in column {position} or the wrong number of columns"),)
    return PollResult(data.readings, events)


def _aware(moment: datetime, target: MeterTarget) -> datetime:
    """Naive datetimes in kwargs mean the meter's local time."""
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(target.timezone))


def read_archive_by_date(target: MeterTarget, kwargs: dict, **_ignored) -> PollResult:
    end = _aware(kwargs["end"], target) if kwargs["end"] else None
    return _read_archive(target, kwargs, _aware(kwargs["start"], target), end)


def read_archive_by_offset_seconds(target: MeterTarget, kwargs: dict, *, now: datetime,
                                   **_ignored) -> PollResult:
    return _read_archive(target, kwargs, now - timedelta(seconds=kwargs["offset_seconds"]), None)


def set_time(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    started = time.monotonic()
    lock = kwargs["lock"]
    with Iec62056Session(target) as session:
        client = Lis200Client(session, tz)
        client.sign_on()
        meter_now = client.read_time(kwargs["time_address"])
        drift = (meter_now - (now + timedelta(seconds=time.monotonic() - started))).total_seconds()
        if abs(drift) <= kwargs["allowed_drift_seconds"]:
            return PollResult()
        if not target.password:
            raise MeterAuthenticationError(f"{target.interface}: setting the clock needs the "
                                           f"{lock} lock key (the meter's secret)")
        client.open_lock(lock, target.password)
        try:
            corrected = now + timedelta(seconds=time.monotonic() - started)
            client.write_time(corrected, kwargs["time_address"])
        finally:
            client.close_lock(lock)
    direction = "ahead" if drift > 0 else "behind"
    content = (f"device clock was {abs(drift):.1f} s {direction}; set to "
               f"{format_lis_time(corrected, tz)} ({target.timezone})")
    return PollResult((), (SystemEvent.truncated("Time adjusted", content),))


_ARCHIVE_PARAMS = (
    Param("archive", "int", default=3, minimum=1),
    Param("control_position", "int", default=3, minimum=1),
    Param("series", "str_map"),
    Param("rows_per_block", "int", default=10, minimum=1),
)

CALLS = {
    "read_single_value": Call("read_single_value", read_single_value, (
        Param("address", "str", required=True),
        Param("series", "str"),
    ), "R1 of one address, e.g. 2:300.0 (Vb)"),
    "read_archive_by_date": Call("read_archive_by_date", read_archive_by_date, (
        Param("start", "datetime", required=True),
        Param("end", "datetime"),
        *_ARCHIVE_PARAMS,
    ), "archive rows from start to end (ISO 8601; naive = meter time)"),
    "read_archive_by_offset_seconds": Call(
        "read_archive_by_offset_seconds", read_archive_by_offset_seconds, (
            Param("offset_seconds", "float", required=True, minimum=1.0),
            *_ARCHIVE_PARAMS,
        ), "archive rows of the last offset_seconds"),
    "set_time": Call("set_time", set_time, (
        Param("allowed_drift_seconds", "float", default=10.0, minimum=0.0),
        Param("lock", "str", default="customer", choices=tuple(LOCKS)),
        Param("time_address", "str", default=TIME_ADDRESS),
    ), "read the device clock; if off by more than allowed, open the lock, write, close it"),
}
