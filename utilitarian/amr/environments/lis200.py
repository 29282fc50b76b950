"""Execution environment `generic_lis200`: Elster EK2x0 single values, archive reads and set_time,
with the platform's documented task calls and kwargs (docs/meters.md has the table).

Archive timestamps are the device's local time (the target's timezone) placed at their UTC instant
(DST flag or row order decide the repeated autumn hour). "The last N seconds" is counted back from
the device's own clock, read in the same session, so a drifting clock loses no rows.
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


def _read_archive(client: Lis200Client, kwargs: dict, start: str, end: str) -> PollResult:
    archive, position = kwargs["archive_number"], kwargs["control_position"]
    columns = client.archive_columns(archive, position)
    rows = client.archive_rows(archive, control_position=position, start=start, end=end,
                               rows_per_block=kwargs["rows_per_block"])
    data = archive_readings(rows, columns, control_position=position, tz=client.tz,
                            series=kwargs["series"])
    events = ()
    if data.skipped_rows:
        events = (SystemEvent.truncated(
            "Archive rows skipped",
            f"archive {archive}: {data.skipped_rows} of {data.rows} rows had no valid "
            f"timestamp in column {position} or the wrong number of columns"),)
    return PollResult(data.readings, events)


def _aware(moment: datetime, target: MeterTarget) -> datetime:
    """Naive datetimes in kwargs mean the meter's local time."""
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(target.timezone))


def read_archive_by_date(target: MeterTarget, kwargs: dict, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    start = format_lis_time(_aware(kwargs["start_date"], target), tz)
    end = format_lis_time(_aware(kwargs["end_date"], target), tz) if kwargs["end_date"] else ""
    with Iec62056Session(target) as session:
        client = Lis200Client(session, tz)
        client.sign_on()
        return _read_archive(client, kwargs, start, end)


def read_archive_by_offset_seconds(target: MeterTarget, kwargs: dict, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    with Iec62056Session(target) as session:
        client = Lis200Client(session, tz)
        client.sign_on()
        # The range is the device's last N seconds by its own clock: rows it stamped with a
        # clock that runs behind ours would otherwise fall outside the range.
        device_now = client.read_time(TIME_ADDRESS)
        start = format_lis_time(device_now - timedelta(seconds=kwargs["offset_seconds"]), tz)
        return _read_archive(client, kwargs, start, "")


def set_time(target: MeterTarget, kwargs: dict, *, clock: datetime, **_ignored) -> PollResult:
    tz = ZoneInfo(target.timezone)
    started = time.monotonic()
    lock = kwargs["lock"]
    with Iec62056Session(target) as session:
        client = Lis200Client(session, tz)
        client.sign_on()
        meter_now = client.read_time(kwargs["time_address"])
        drift = (meter_now - (clock + timedelta(seconds=time.monotonic() - started))).total_seconds()
        if abs(drift) <= kwargs["allowed_drift_seconds"]:
            return PollResult()
        if not target.password:
            raise MeterAuthenticationError(f"{target.interface}: setting the clock needs the "
                                           f"{lock} lock key (the meter's secret)")
        client.open_lock(lock, target.password)
        try:
            corrected = clock + timedelta(seconds=time.monotonic() - started)
            client.write_time(corrected, kwargs["time_address"])
        finally:
            client.close_lock(lock)
    direction = "ahead" if drift > 0 else "behind"
    content = (f"device clock was {abs(drift):.1f} s {direction}; set to "
               f"{format_lis_time(corrected, tz)} ({target.timezone})")
    return PollResult((), (SystemEvent.truncated("Time adjusted", content),))


_ARCHIVE_PARAMS = (
    Param("archive_number", "int", default=3, minimum=1, aliases=("archive",),
          doc="archive to read (the platform documents it as required; default 3)"),
    Param("control_position", "int", default=3, minimum=1,
          doc="1-based column that selects the range and holds each row's timestamp (default 3)"),
    Param("series", "str_map", doc="{column address: series}; default: every column with a unit, "
                                   "under its address"),
    Param("rows_per_block", "int", default=10, minimum=1, doc="rows per R3 partial block (10)"),
)

CALLS = {
    "read_single_value": Call("read_single_value", read_single_value, (
        Param("address", "str", required=True, doc="LIS-200 address, e.g. 2:300.0 (Vb)"),
        Param("series", "str", doc="series name (default: the address)"),
    ), "R1 of one address, e.g. 2:300.0 (Vb)"),
    "read_archive_by_date": Call("read_archive_by_date", read_archive_by_date, (
        Param("start_date", "datetime", required=True, aliases=("start",),
              doc="oldest row (ISO 8601; naive = meter time)"),
        Param("end_date", "datetime", aliases=("end",), doc="newest row (default: the latest)"),
        *_ARCHIVE_PARAMS,
    ), "archive rows from start_date to end_date, oldest first"),
    "read_archive_by_offset_seconds": Call(
        "read_archive_by_offset_seconds", read_archive_by_offset_seconds, (
            Param("offset_seconds", "number", required=True, minimum=1,
                  doc="read the rows of the device's last N seconds (by its own clock)"),
            *_ARCHIVE_PARAMS,
        ), "archive rows of the last offset_seconds"),
    "set_time": Call("set_time", set_time, (
        Param("allowed_drift_seconds", "float", default=10.0, minimum=0.0,
              doc="correct only a clock further off than this (10)"),
        Param("lock", "str", default="customer", choices=tuple(LOCKS),
              doc="lock opened with the meter's secret: customer or supplier"),
        Param("time_address", "str", default=TIME_ADDRESS, doc="clock address (1:400.0)"),
    ), "read the device clock; if off by more than allowed, open the lock, write, close it"),
}
