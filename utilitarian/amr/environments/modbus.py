"""Execution environment `generic_modbus`: read a meter's register map (TCP, RTU, RTU over TCP)."""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Mapping

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.errors import BadTaskCall, MeterUnsupported
from utilitarian.amr.meter_types import MeterType
from utilitarian.amr.protocols.modbus import read_meter_steps
from utilitarian.amr.readings import PollResult
from utilitarian.amr.target import MeterTarget

NAME = "generic_modbus"
PROTOCOLS = ("modbus",)  # MeterTarget.protocol values this environment drives
DEFAULT_CALL = "read_values"  # what `utilitarian read` runs without --call


def _meter_type(target: MeterTarget, name: str | None,
                meter_types: Mapping[str, MeterType]) -> MeterType:
    chosen = name or target.meter_type
    if not chosen:
        raise MeterUnsupported(f"{target}: no meter type (add ?type=... to the URL)")
    if chosen not in meter_types:
        hint = difflib.get_close_matches(chosen, meter_types, n=1)
        message = f"unknown meter type {chosen!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        if name:
            raise BadTaskCall(NAME, "read_values", message)
        raise MeterUnsupported(f"{target}: {message}")
    return meter_types[chosen]


def read_values(target: MeterTarget, kwargs: dict, *, meter_types: Mapping[str, MeterType],
                now: datetime) -> PollResult:
    meter_type = _meter_type(target, kwargs["meter_type"], meter_types)
    series = kwargs["series"]
    if series is not None:
        unknown = [s for s in series if s not in meter_type.series]
        if unknown:
            raise BadTaskCall(NAME, "read_values",
                              f"series {', '.join(map(repr, unknown))} not in meter type "
                              f"{meter_type.name!r}")
    # Stepwise (steps.py): run_prepared_steps parks the waits of pooled Modbus TCP reads.
    return (yield from read_meter_steps(target, meter_type, series=series, now=now))


CALLS = {
    "read_values": Call("read_values", read_values, (
        Param("series", "str_list"),
        Param("meter_type", "str"),
    ), "every register of the meter type's map (or only `series`), merged into few requests"),
}
