"""Execution environment `generic_mbus`: read a wired M-Bus slave (all telegrams) and turn its
variable data records into readings with units.

Series are record keys (`energy`, `volume`, `flow_temperature`, `power_max`, `energy@s1` for
storage 1, `@t` tariff, `@u` subunit) unless `series` maps them. Values of a storage number are
stamped with that storage's date record when the meter sends one (the due-date values of a heat
meter), otherwise with the poll time. Records we cannot read become one "Records skipped" event.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.protocols.mbus import MbusSession
from utilitarian.amr.readings import PollResult, Reading, SystemEvent
from utilitarian.amr.target import MeterTarget

NAME = "generic_mbus"
PROTOCOLS = ("mbus",)  # MeterTarget.protocol values this environment drives
DEFAULT_CALL = "read_values"  # what `utilitarian read` runs without --call
TIME_POINTS = ("date", "datetime")


def read_values(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    with MbusSession(target) as session:
        readout = session.read()
    zone = ZoneInfo(target.timezone)
    stamp = now.replace(microsecond=0)
    # Time points per (storage, subunit): the instant the values of that storage belong to.
    moments = {(r.storage, r.subunit): r.value.replace(tzinfo=zone) for r in readout.records
               if r.quantity in TIME_POINTS and isinstance(r.value, datetime) and r.storage}
    wanted = kwargs["series"]
    readings, skipped = [], []
    for record in readout.records:
        if record.problem:
            skipped.append(f"{record.key}: {record.problem}")
            continue
        if not isinstance(record.value, Decimal) or record.quantity in TIME_POINTS:
            continue
        key = record.key
        if wanted is not None and key not in wanted:
            continue
        series = wanted[key] if wanted else key
        when = moments.get((record.storage, record.subunit), stamp) if record.storage else stamp
        readings.append(Reading(series, when, str(record.value), record.unit))
    events = ()
    if skipped:
        events = (SystemEvent.truncated("Records skipped",
                                        f"{len(skipped)} record(s) without a value: " + "; ".join(skipped)),)
    return PollResult(tuple(readings), events)


CALLS = {
    "read_values": Call("read_values", read_values, (
        Param("series", "str_map"),
    ), "REQ_UD2 until the last telegram; every record with a value (or only the `series` map's keys, renamed)"),
}
