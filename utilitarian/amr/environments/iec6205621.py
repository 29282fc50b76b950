"""Execution environment `generic_iec6205621`: mode C readout, programming-mode reads, set_time.

Series are the OBIS ids exactly as the meter reports them; timestamps are the poll time, because a
readout's values are current values. A non-zero error register F.F becomes a system event.

The calls are stepwise functions (utilitarian/steps.py): over TCP a worker parks their waits
(run_prepared_steps); on a serial line they run in their thread without yielding.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.errors import MeterProtocolError, MeterUnsupported
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.protocols.iec_datasets import DataSet, parse_data_lines
from utilitarian.amr.protocols.iec_load_profile import (event_log_to_events, format_profile_time,
                                                         parse_load_profile, profile_to_result)
from utilitarian.amr.readings import PollResult, Reading, SystemEvent
from utilitarian.amr.target import MeterTarget
from utilitarian.steps import Steps

NAME = "generic_iec6205621"
# 62056-21 and its LIS-200 dialect share the framing
PROTOCOLS = ("iec62056-21", "lis200")  # MeterTarget.protocol values this environment drives
DEFAULT_CALL = "readout"  # what `utilitarian read` runs without --call
ERROR_REGISTER = "F.F"
# OBIS value group C of objects that are not measurements: 0 general purpose (ids, clock), C and 96
# service entries, F and 97 error registers, 98/99 data profiles. They become readings only when
# asked for by address.
NOT_MEASUREMENTS = {"0", "C", "F", "96", "97", "98", "99"}


def is_measurement(address: str) -> bool:
    """True for quantities (1.8.0, 1-0:32.7.0*255), False for ids, clock, status (0.0.0, C.1.0, F.F)."""
    group_c = address.split(":")[-1].split(".")[0]
    return group_c not in NOT_MEASUREMENTS


def _error_event(dataset: DataSet) -> SystemEvent | None:
    raw = dataset.value.raw.strip()
    if raw and set(raw) - {"0"}:
        return SystemEvent.truncated("Error register F.F != 0", f"F.F({raw}) reported by the meter")
    return None


def datasets_to_result(datasets, stamp: datetime, only: set[str] | None = None, *,
                       measurements_only: bool = True) -> PollResult:
    readings: list[Reading] = []
    events: list[SystemEvent] = []
    for dataset in datasets:
        if not dataset.values:
            continue
        if dataset.address == ERROR_REGISTER and (event := _error_event(dataset)):
            events.append(event)
        if only is not None and dataset.address not in only:
            continue
        if only is None and measurements_only and not is_measurement(dataset.address):
            continue
        number = dataset.value.number
        if dataset.address and number is not None:
            readings.append(Reading(dataset.address, stamp, number, dataset.value.unit))
    return PollResult(tuple(readings), tuple(events))


def readout(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> Steps:
    with Iec62056Session(target) as session:
        result = yield from session.readout_steps()
    only = set(kwargs["addresses"]) if kwargs["addresses"] else None
    return datasets_to_result(result.datasets, now.replace(microsecond=0), only)


def read_values(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> Steps:
    datasets: list[DataSet] = []
    events: list[SystemEvent] = []
    with Iec62056Session(target) as session:
        yield from session.enter_programming_steps(target.password)
        for address in kwargs["addresses"]:
            try:
                datasets.extend((yield from session.read_steps(address, kwargs["params"])))
            except MeterUnsupported as exc:
                # One unknown address must not cost the others; the operator sees which.
                events.append(SystemEvent.truncated("Address not readable", exc.message))
    result = datasets_to_result(datasets, now.replace(microsecond=0), measurements_only=False)
    return PollResult(result.readings, result.events + tuple(events))


def _parse_clock(time_text: str, date_text: str, tz: ZoneInfo) -> datetime:
    t = "".join(c for c in time_text if c.isdigit())
    d = "".join(c for c in date_text if c.isdigit())[-6:]  # "1YYMMDD" (century flag) -> YYMMDD
    if len(t) != 6 or len(d) != 6:
        raise MeterProtocolError(f"meter clock not understood: time {time_text[:20]!r}, "
                                 f"date {date_text[:20]!r}")
    try:
        local = datetime(2000 + int(d[:2]), int(d[2:4]), int(d[4:]), int(t[:2]), int(t[2:4]), int(t[4:]))
    except ValueError:
        raise MeterProtocolError(f"meter clock is not a valid date: {date_text[:20]} {time_text[:20]}") from None
    return local.replace(tzinfo=tz)


def _like(sample: str, digits: str) -> str:
    """`digits` in the shape the meter used: "12:00:00" or "120000", "24-01-05" or "240105"."""
    separator = next((c for c in sample if not c.isdigit()), "")
    return separator.join(digits[i:i + 2] for i in range(0, 6, 2)) if separator else digits


def set_time(target: MeterTarget, kwargs: dict, *, clock: datetime, **_ignored) -> Steps:
    tz = ZoneInfo(target.timezone)
    started = time.monotonic()
    with Iec62056Session(target) as session:
        yield from session.enter_programming_steps(target.password)
        time_text = (yield from session.read_steps(kwargs["time_address"]))[0].value.raw
        date_text = (yield from session.read_steps(kwargs["date_address"]))[0].value.raw
        # Compare against the true time at the moment of the read, not at the start of the task.
        true_now = clock + timedelta(seconds=time.monotonic() - started)
        meter_now = _parse_clock(time_text, date_text, tz)
        drift = (meter_now - true_now).total_seconds()
        if abs(drift) <= kwargs["allowed_drift_seconds"]:
            return PollResult()
        corrected = (clock + timedelta(seconds=time.monotonic() - started)).astimezone(tz)
        yield from session.write_steps(kwargs["time_address"], _like(time_text, corrected.strftime("%H%M%S")))
        yield from session.write_steps(kwargs["date_address"], _like(date_text, corrected.strftime("%y%m%d")))
    direction = "ahead" if drift > 0 else "behind"
    content = (f"meter clock was {abs(drift):.1f} s {direction}; set to "
               f"{corrected.strftime('%Y-%m-%d %H:%M:%S')} ({target.timezone}) "
               f"[{corrected.astimezone(timezone.utc).isoformat()}]")
    return PollResult((), (SystemEvent.truncated("Time adjusted", content),))


def _profile_range_text(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return format_profile_time(local.replace(tzinfo=None), "1" if local.dst() else "0")


def _read_profile(session: Iec62056Session, kwargs: dict, tz: ZoneInfo, low: datetime,
                  high: datetime | None) -> Steps:
    address = f"P.{kwargs['profile']:02d}"
    params = f"{_profile_range_text(low, tz)};{_profile_range_text(high, tz) if high else ''}"
    blocks = yield from session.read_partial_steps(address, params, command="R5")
    lines = [line for block in blocks for line in parse_data_lines(block)]
    if lines and lines[0] and lines[0][0].values and lines[0][0].values[0].raw.upper().startswith("ERR"):
        raise MeterUnsupported(f"{session.where}: meter has no load profile {address}")
    result = profile_to_result(parse_load_profile(lines, address), tz, low=low, high=high)
    if kwargs["event_log"]:
        try:
            log_blocks = yield from session.read_partial_steps("P.98", params, command="R5")
            log_lines = [line for block in log_blocks for line in parse_data_lines(block)]
        except MeterUnsupported:
            log_lines = []
        if log_lines and not (log_lines[0] and log_lines[0][0].value.raw.upper().startswith("ERR")):
            result = result + PollResult((), event_log_to_events(log_lines, tz))
    return result


def read_load_profile(target: MeterTarget, kwargs: dict, **_ignored) -> Steps:
    tz = ZoneInfo(target.timezone)
    low = kwargs["start_date"] if kwargs["start_date"].tzinfo else kwargs["start_date"].replace(tzinfo=tz)
    high = kwargs["end_date"]
    if high is not None and high.tzinfo is None:
        high = high.replace(tzinfo=tz)
    with Iec62056Session(target) as session:
        yield from session.enter_programming_steps(target.password)
        return (yield from _read_profile(session, kwargs, tz, low.astimezone(timezone.utc),
                                         high.astimezone(timezone.utc) if high else None))


def read_load_profile_by_offset_seconds(target: MeterTarget, kwargs: dict, **_ignored) -> Steps:
    tz = ZoneInfo(target.timezone)
    with Iec62056Session(target) as session:
        yield from session.enter_programming_steps(target.password)
        # Counted back from the meter's own clock, like the platform's archive reads.
        time_text = (yield from session.read_steps(kwargs["time_address"]))[0].value.raw
        date_text = (yield from session.read_steps(kwargs["date_address"]))[0].value.raw
        meter_now = _parse_clock(time_text, date_text, tz)
        low = (meter_now - timedelta(seconds=kwargs["offset_seconds"])).astimezone(timezone.utc)
        return (yield from _read_profile(session, kwargs, tz, low, None))


_PROFILE_PARAMS = (
    Param("profile", "int", default=1, minimum=1, choices=(1, 2), doc="1 for P.01, 2 for P.02"),
    Param("event_log", "bool", default=False, doc="also read P.98 (where the meter has it) into events"),
)

CALLS = {
    "readout": Call("readout", readout, (Param("addresses", "str_list", doc="keep only these OBIS ids"),),
                    "mode C data readout; all numeric values, or only `addresses`"),
    "read_values": Call("read_values", read_values, (
        Param("addresses", "str_list", required=True, doc="OBIS ids to read with R1"),
        Param("params", "str", default="", doc="text inside the () of each R1"),
    ), "programming mode R1 read of each address (password from the meter's secret)"),
    "set_time": Call("set_time", set_time, (
        Param("allowed_drift_seconds", "float", default=10.0, minimum=0.0,
              doc="correct only a clock further off than this (10)"),
        Param("time_address", "str", default="0.9.1", doc="clock time address"),
        Param("date_address", "str", default="0.9.2", doc="clock date address"),
    ), "read the meter clock; if off by more than allowed_drift_seconds, write time and date"),
    "read_load_profile": Call("read_load_profile", read_load_profile, (
        Param("start_date", "datetime", required=True, doc="first interval (ISO 8601; naive = meter time)"),
        Param("end_date", "datetime", doc="last interval (default: the latest)"),
        *_PROFILE_PARAMS,
    ), "load profile (R5 P.01) from start_date to end_date: one reading per channel and interval"),
    "read_load_profile_by_offset_seconds": Call(
        "read_load_profile_by_offset_seconds", read_load_profile_by_offset_seconds, (
            Param("offset_seconds", "number", required=True, minimum=1,
                  doc="intervals of the meter's last N seconds (by its own clock)"),
            *_PROFILE_PARAMS,
            Param("time_address", "str", default="0.9.1", doc="clock time address (0.9.1)"),
            Param("date_address", "str", default="0.9.2", doc="clock date address (0.9.2)"),
        ), "load profile of the last offset_seconds"),
}
