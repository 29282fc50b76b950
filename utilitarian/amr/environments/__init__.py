"""Execution environments: dispatch an AmrTask's `task_call` with `task_kwargs` to a protocol.

`run_task_call` raises only MeterError subclasses; kwargs are checked before any I/O.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from types import GeneratorType, MappingProxyType, ModuleType
from typing import Mapping

from utilitarian import plugins, steps

from utilitarian.amr.environments.params import Call, bind_kwargs
from utilitarian.amr.errors import BadTaskCall, MeterError, MeterProtocolError
from utilitarian.amr.meter_types import MeterType, load_registered_meter_types
from utilitarian.amr.readings import PollResult
from utilitarian.amr.target import MeterTarget
from utilitarian.errors import ConfigError

log = logging.getLogger(__name__)

# Execution environments come from the `utilitarian.environments` entry points (ours are declared
# in pyproject.toml like a site's): NAME = "pkg.module", a module holding
#   CALLS: {task_call: Call}          what the environment offers (params.Call, params.Param)
#   PROTOCOLS: ("dlms", ...)          the MeterTarget.protocol values it can drive
#   DEFAULT_CALL, DEFAULT_KWARGS      optional: what `utilitarian read` runs when not told
# Modules are imported on first use (pymodbus is heavy).


class _ExecutionTypes(Mapping):
    """name -> module name of every registered environment, read from the entry points."""

    def _modules(self) -> dict[str, str]:
        return plugins.modules(plugins.ENVIRONMENTS_GROUP)

    def __getitem__(self, name: str) -> str:
        return self._modules()[name]

    def __iter__(self):
        return iter(self._modules())

    def __len__(self) -> int:
        return len(self._modules())


EXECUTION_TYPES: Mapping[str, str] = _ExecutionTypes()
# Other spellings of an execution type that the platform uses (its API spec says generic_corus_meter).
EXECUTION_TYPE_ALIASES = {"generic_corus_meter": "generic_corus"}


def canonical_execution_type(execution_type: str) -> str:
    return EXECUTION_TYPE_ALIASES.get(execution_type, execution_type)


# execution type -> (the declared entry points it was found among, its checked module). Every poll
# asks twice; finding and checking it again each time was ~5% of a poll's CPU (docs/benchmarks-amr.md).
# Keyed by the entry points' tuple, so `plugins.clear_caches()` (a package installed at run time)
# makes every type be looked up again.
_checked: dict[str, tuple[object, ModuleType]] = {}


def environment(execution_type: str) -> ModuleType:
    """The environment's module, checked; unknown or broken ones are BadTaskCall (not retried)."""
    execution_type = canonical_execution_type(execution_type)
    declared = plugins.declared(plugins.ENVIRONMENTS_GROUP)
    hit = _checked.get(execution_type)
    if hit is not None and hit[0] is declared:
        return hit[1]
    module = _find_environment(execution_type)
    _checked[execution_type] = (declared, module)
    return module


def _find_environment(execution_type: str) -> ModuleType:
    if execution_type not in EXECUTION_TYPES:
        hint = difflib.get_close_matches(execution_type, EXECUTION_TYPES, n=1)
        raise BadTaskCall(execution_type, "*", "unknown meter_execution_type"
                          + (f" (did you mean {hint[0]!r}?)" if hint
                             else f"; known: {', '.join(EXECUTION_TYPES)}"))
    try:
        module = plugins.load(plugins.Plugin(execution_type, EXECUTION_TYPES[execution_type], "?"),
                              plugins.ENVIRONMENTS_GROUP)
    except ConfigError as exc:
        raise BadTaskCall(execution_type, "*", exc.reason) from None
    if not isinstance(getattr(module, "CALLS", None), Mapping) or \
            not isinstance(getattr(module, "PROTOCOLS", None), tuple):
        raise BadTaskCall(execution_type, "*", f"{module.__name__} has no CALLS mapping and PROTOCOLS tuple")
    return module


def calls_of(execution_type: str) -> Mapping[str, Call]:
    """The task calls an execution environment offers."""
    return environment(execution_type).CALLS


def default_execution_type(protocol: str) -> str | None:
    """The environment `utilitarian read` uses for a protocol (its UrlProtocol says)."""
    from utilitarian.amr.target import url_protocols

    spec = url_protocols().get(protocol)
    return spec.execution_type if spec else None


@functools.lru_cache(maxsize=1)
def _default_meter_types() -> Mapping[str, MeterType]:
    """The registered maps (utilitarian.meter_types), parsed once per process (read-only view:
    every poll shares it)."""
    return MappingProxyType(load_registered_meter_types())


def resolve_call(execution_type: str, task_call: str, *, protocol: str | None = None) -> Call:
    """The Call for (execution type, task_call), the environment's CALL_ALIASES applied;
    BadTaskCall naming what is wrong. `protocol` (the meter's) checks the environment drives it."""
    execution_type = canonical_execution_type(execution_type)
    module = environment(execution_type)
    calls, aliases = module.CALLS, getattr(module, "CALL_ALIASES", {})
    call = calls.get(aliases.get(task_call, task_call))
    if call is None:
        hint = difflib.get_close_matches(task_call, list(calls) + list(aliases), n=1)
        raise BadTaskCall(execution_type, task_call, "unknown task_call"
                          + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(calls)}"))
    if protocol is not None and protocol not in module.PROTOCOLS:
        raise BadTaskCall(execution_type, task_call, f"cannot drive a {protocol} meter")
    return call


def validate_task_call(execution_type: str, task_call: str, task_kwargs, *,
                       protocol: str | None = None) -> dict:
    """Check an AMR task (or an on-demand call) without any I/O: the bound kwargs, or BadTaskCall
    naming the unknown execution type, task_call, missing or unknown kwarg. For `amr-tasks add`,
    `meters import` and `config check`, so they refuse exactly what a worker would."""
    call = resolve_call(execution_type, task_call, protocol=protocol)
    return bind_kwargs(canonical_execution_type(execution_type), call, task_kwargs)


def protocols_of(execution_type: str) -> tuple[str, ...]:
    return environment(execution_type).PROTOCOLS


@functools.lru_cache(maxsize=None)
def _accepted(func) -> frozenset[str] | None:
    """Keyword arguments a call function takes (None: any), so an environment written before a
    new argument was added keeps working."""
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


@dataclass(frozen=True)
class PreparedCall:
    """A task call checked and its kwargs bound, ready to run against any meter the environment
    drives; what a poll would otherwise work out again from the AmrTask each time."""

    execution_type: str
    task_call: str
    call: Call
    kwargs: Mapping
    accepted: frozenset[str] | None
    protocols: tuple[str, ...]
    declared: tuple  # the environments' entry points it was prepared among

    def current(self) -> bool:
        """False once the registered environments changed (plugins.clear_caches)."""
        return plugins.declared(plugins.ENVIRONMENTS_GROUP) is self.declared


def prepare_call(execution_type: str, task_call: str, task_kwargs) -> PreparedCall:
    """Check (execution type, task_call, task_kwargs) without I/O; BadTaskCall names what is wrong."""
    declared = plugins.declared(plugins.ENVIRONMENTS_GROUP)
    execution_type = canonical_execution_type(execution_type)
    call = resolve_call(execution_type, task_call)
    kwargs = bind_kwargs(execution_type, call, task_kwargs)
    return PreparedCall(execution_type, task_call, call, MappingProxyType(kwargs), _accepted(call.func),
                        protocols_of(execution_type), declared)


def run_task_call(execution_type: str, task_call: str, target: MeterTarget, task_kwargs: dict,
                  *, meter_types: Mapping[str, MeterType] | None = None,
                  now: datetime | None = None, clock: datetime | None = None) -> PollResult:
    """Run one task call against one meter. `meter_types` is the complete set of register maps
    (built-ins merged with the site's); None means the built-ins. `now` stamps current values
    (the round's slot for scheduled polls); `clock` is the true time (default: the system clock),
    which set_time and "the last N seconds" reads go by."""
    # Checked before prepare_call binds the kwargs: an unknown call, then a meter the environment
    # cannot drive, are reported ahead of a kwarg fault.
    execution_type = canonical_execution_type(execution_type)
    resolve_call(execution_type, task_call)
    if target.protocol not in protocols_of(execution_type):
        raise BadTaskCall(execution_type, task_call,
                          f"cannot drive a {target.protocol} meter ({target})")
    return run_prepared(prepare_call(execution_type, task_call, task_kwargs), target, meter_types=meter_types,
                        now=now, clock=clock)


def run_prepared(prepared: PreparedCall, target: MeterTarget, *, meter_types: Mapping[str, MeterType] | None = None,
                 now: datetime | None = None, clock: datetime | None = None) -> PollResult:
    """run_task_call with the call prepared once (prepare_call) for many meters."""
    return steps.drive(run_prepared_steps(prepared, target, meter_types=meter_types, now=now, clock=clock))


def run_prepared_steps(prepared: PreparedCall, target: MeterTarget, *,
                       meter_types: Mapping[str, MeterType] | None = None, now: datetime | None = None,
                       clock: datetime | None = None) -> steps.Steps:
    """run_prepared as a stepwise function (steps.py): a call function written as a generator
    function yields its waits through it; any other runs in this thread, yielding nothing."""
    execution_type, task_call = prepared.execution_type, prepared.task_call
    if target.protocol not in prepared.protocols:
        raise BadTaskCall(execution_type, task_call,
                          f"cannot drive a {target.protocol} meter ({target})")
    for name, moment in (("now", now), ("clock", clock)):
        if moment is not None and moment.tzinfo is None:
            raise BadTaskCall(execution_type, task_call, f"{name} must be timezone-aware")
    if clock is None:
        clock = datetime.now(timezone.utc)
    if now is None:
        now = clock
    types = meter_types if meter_types is not None else _default_meter_types()
    extras = {"meter_types": types, "now": now, "clock": clock}
    accepted = prepared.accepted
    if accepted is not None:
        extras = {k: v for k, v in extras.items() if k in accepted}
    try:
        # Copies (lists and tables too): an environment may change its kwargs; the prepared ones
        # serve the next meter.
        kwargs = {k: v.copy() if isinstance(v, (list, dict)) else v for k, v in prepared.kwargs.items()}
        result = prepared.call.func(target, kwargs, **extras)
        if isinstance(result, GeneratorType):
            result = yield from result
        return result
    except MeterError:
        raise
    except Exception as exc:  # the contract is "only MeterError"; a bug still gets a traceback
        log.exception("%s.%s on %s failed unexpectedly; reported as a protocol error",
                      execution_type, task_call, target)
        raise MeterProtocolError(f"{execution_type}.{task_call}: unexpected "
                                 f"{type(exc).__name__}: {exc}") from exc
