"""Execution environments: dispatch an AmrTask's `task_call` with `task_kwargs` to a protocol.

`run_task_call` raises only MeterError subclasses; kwargs are checked before any I/O.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Mapping

from utilitarian.amr.environments.params import Call, bind_kwargs
from utilitarian.amr.errors import BadTaskCall, MeterError, MeterProtocolError
from utilitarian.amr.meter_types import MeterType, load_builtin_meter_types
from utilitarian.amr.readings import PollResult
from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)

# meter_execution_type -> module holding CALLS (imported on first use: pymodbus is heavy)
EXECUTION_TYPES = {
    "generic_iec6205621": "utilitarian.amr.environments.iec6205621",
    "generic_lis200": "utilitarian.amr.environments.lis200",
    "generic_modbus": "utilitarian.amr.environments.modbus",
    "generic_corus": "utilitarian.amr.environments.corus",
}
# Other spellings of an execution type that the platform uses (its API spec says generic_corus_meter).
EXECUTION_TYPE_ALIASES = {"generic_corus_meter": "generic_corus"}
# Which protocols each environment can drive (LIS-200 is a 62056-21 dialect).
PROTOCOLS = {
    "generic_iec6205621": ("iec62056-21", "lis200"),
    "generic_lis200": ("lis200", "iec62056-21"),
    "generic_modbus": ("modbus",),
    "generic_corus": ("corus",),
}
DEFAULT_EXECUTION_TYPE = {"iec62056-21": "generic_iec6205621", "lis200": "generic_lis200",
                          "modbus": "generic_modbus", "corus": "generic_corus"}


def canonical_execution_type(execution_type: str) -> str:
    return EXECUTION_TYPE_ALIASES.get(execution_type, execution_type)


def calls_of(execution_type: str) -> Mapping[str, Call]:
    """The task calls an execution environment offers."""
    execution_type = canonical_execution_type(execution_type)
    if execution_type not in EXECUTION_TYPES:
        hint = difflib.get_close_matches(execution_type, EXECUTION_TYPES, n=1)
        raise BadTaskCall(execution_type, "*", "unknown meter_execution_type"
                          + (f" (did you mean {hint[0]!r}?)" if hint
                             else f"; known: {', '.join(EXECUTION_TYPES)}"))
    return importlib.import_module(EXECUTION_TYPES[execution_type]).CALLS


@functools.lru_cache(maxsize=1)
def _default_meter_types() -> Mapping[str, MeterType]:
    """The shipped maps, parsed once per process (read-only view: every poll shares it)."""
    return MappingProxyType(load_builtin_meter_types())


def resolve_call(execution_type: str, task_call: str, *, protocol: str | None = None) -> Call:
    """The Call for (execution type, task_call) with the call's aliases applied; BadTaskCall naming
    what is wrong. `protocol` (of the meter) checks the environment can drive it."""
    execution_type = canonical_execution_type(execution_type)
    calls = calls_of(execution_type)
    aliases = getattr(importlib.import_module(EXECUTION_TYPES[execution_type]), "CALL_ALIASES", {})
    call = calls.get(aliases.get(task_call, task_call))
    if call is None:
        hint = difflib.get_close_matches(task_call, list(calls) + list(aliases), n=1)
        raise BadTaskCall(execution_type, task_call, "unknown task_call"
                          + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(calls)}"))
    if protocol is not None and protocol not in PROTOCOLS[execution_type]:
        raise BadTaskCall(execution_type, task_call, f"cannot drive a {protocol} meter")
    return call


def validate_task_call(execution_type: str, task_call: str, task_kwargs, *,
                       protocol: str | None = None) -> dict:
    """Check an AMR task (or an on-demand call) without any I/O: the bound kwargs, or BadTaskCall
    naming the unknown execution type, task_call, missing or unknown kwarg. For `amr-tasks add`,
    `meters import` and `config check`, so they refuse exactly what a worker would."""
    call = resolve_call(execution_type, task_call, protocol=protocol)
    return bind_kwargs(canonical_execution_type(execution_type), call, task_kwargs)


@functools.lru_cache(maxsize=None)
def _accepted(func) -> frozenset[str] | None:
    """Keyword arguments a call function takes (None: any), so an environment written before a
    new one was added keeps working."""
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def run_task_call(execution_type: str, task_call: str, target: MeterTarget, task_kwargs: dict,
                  *, meter_types: Mapping[str, MeterType] | None = None,
                  now: datetime | None = None, clock: datetime | None = None) -> PollResult:
    """Run one task call against one meter. `meter_types` is the complete set of register maps
    (built-ins merged with the site's); None means the built-ins. `now` stamps current values
    (the round's slot for scheduled polls); `clock` is the true time (default: now from the
    system clock), which set_time and "the last N seconds" reads go by."""
    execution_type = canonical_execution_type(execution_type)
    call = resolve_call(execution_type, task_call, protocol=target.protocol)
    kwargs = bind_kwargs(execution_type, call, task_kwargs)
    for name, moment in (("now", now), ("clock", clock)):
        if moment is not None and moment.tzinfo is None:
            raise BadTaskCall(execution_type, task_call, f"{name} must be timezone-aware")
    if clock is None:
        clock = datetime.now(timezone.utc)
    if now is None:
        now = clock
    types = meter_types if meter_types is not None else _default_meter_types()
    extras = {"meter_types": types, "now": now, "clock": clock}
    accepted = _accepted(call.func)
    if accepted is not None:
        extras = {k: v for k, v in extras.items() if k in accepted}
    try:
        return call.func(target, kwargs, **extras)
    except MeterError:
        raise
    except Exception as exc:  # the contract is "only MeterError"; a bug still gets a traceback
        log.exception("%s.%s on %s failed unexpectedly; reported as a protocol error",
                      execution_type, task_call, target)
        raise MeterProtocolError(f"{execution_type}.{task_call}: unexpected "
                                 f"{type(exc).__name__}: {exc}") from exc
