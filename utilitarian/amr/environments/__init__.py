"""Execution environments: dispatch an AmrTask's `task_call` with `task_kwargs` to a protocol.

`run_task_call` raises only MeterError subclasses; kwargs are checked before any I/O.
"""

from __future__ import annotations

import difflib
import functools
import importlib
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
    "generic_dlms": "utilitarian.amr.environments.dlms",
    "generic_mbus": "utilitarian.amr.environments.mbus",
}
# Which protocols each environment can drive (LIS-200 is a 62056-21 dialect).
PROTOCOLS = {
    "generic_iec6205621": ("iec62056-21", "lis200"),
    "generic_lis200": ("lis200", "iec62056-21"),
    "generic_modbus": ("modbus",),
    "generic_dlms": ("dlms",),
    "generic_mbus": ("mbus",),
}
DEFAULT_EXECUTION_TYPE = {"iec62056-21": "generic_iec6205621", "lis200": "generic_lis200",
                          "modbus": "generic_modbus", "dlms": "generic_dlms", "mbus": "generic_mbus"}

def calls_of(execution_type: str) -> Mapping[str, Call]:
    """The task calls an execution environment offers."""
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


def run_task_call(execution_type: str, task_call: str, target: MeterTarget, task_kwargs: dict,
                  *, meter_types: Mapping[str, MeterType] | None = None,
                  now: datetime | None = None) -> PollResult:
    """Run one task call against one meter. `meter_types` is the complete set of register maps
    (built-ins merged with the site's); None means the built-ins. `now` is the poll time."""
    calls = calls_of(execution_type)
    call = calls.get(task_call)
    if call is None:
        hint = difflib.get_close_matches(task_call, calls, n=1)
        raise BadTaskCall(execution_type, task_call, "unknown task_call"
                          + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(calls)}"))
    if target.protocol not in PROTOCOLS[execution_type]:
        raise BadTaskCall(execution_type, task_call,
                          f"cannot drive a {target.protocol} meter ({target})")
    kwargs = bind_kwargs(execution_type, call, task_kwargs)
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        raise BadTaskCall(execution_type, task_call, "now must be timezone-aware")
    types = meter_types if meter_types is not None else _default_meter_types()
    try:
        return call.func(target, kwargs, meter_types=types, now=now)
    except MeterError:
        raise
    except Exception as exc:  # the contract is "only MeterError"; a bug still gets a traceback
        log.exception("%s.%s on %s failed unexpectedly; reported as a protocol error",
                      execution_type, task_call, target)
        raise MeterProtocolError(f"{execution_type}.{task_call}: unexpected "
                                 f"{type(exc).__name__}: {exc}") from exc
