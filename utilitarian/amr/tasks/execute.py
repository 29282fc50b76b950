"""`amr.execute_meter_task` on the scheduled queues and amr.on_demand: poll one meter through its
execution environment, then hand readings, events and the run's outcome to the commit outbox
(batched with the other polls of this process, see outbox.py). Timeouts are retried with backoff;
the last failure becomes a "Poll failed" event.
"""

from __future__ import annotations

import functools
import logging
import random
import time

from utilitarian import queues, steps
from utilitarian.amr import metrics
from utilitarian.amr.blocking import InterfaceBusy, holding_interface, take_interface
from utilitarian.amr.errors import MeterError, MeterTimeout
from utilitarian.amr.model import MeterReading, event_id, iso_utc, parse_utc, uuid5_text
from utilitarian.amr.store import StoreError
from utilitarian.amr.tasks.common import meter_types_of, settings_of, store_of, utc_now
from utilitarian.amr.tasks.faultpoints import faultpoint
from utilitarian.amr.tasks.outbox import outbox_of
from utilitarian.errors import BrokerError, ConfigError
from utilitarian.tasks import Defer, Reject, SoftTimeLimitExceeded, task

log = logging.getLogger(__name__)

MAX_RETRIES = 3
RETRY_FOR = (MeterTimeout, SoftTimeLimitExceeded, StoreError, BrokerError)


class JobFailed(Exception):
    """A failure that ends the job without a retry (recorded as an event and a failed run)."""


def _gave_up(ctx, exc: BaseException, args: tuple, kwargs: dict) -> None:
    """The worker dead-letters the job (store or broker errors past the last retry, a hard time
    limit): record the failed run and a "Poll failed" event, so its round can finish."""
    meter = kwargs.get("meter") or kwargs.get("meter_device") or (args[0] if args else "?")
    label = kwargs.get("amr_task") or kwargs.get("task_call") or "?"
    text = f"{type(exc).__name__}: {exc}"
    steps.drive(_finish(ctx, meter, kwargs.get("amr_task"), kwargs.get("round_id"), "failed", text, time.monotonic(),
                        events=[_event(ctx, meter, "Poll failed", f"{label} after {ctx.retries + 1} attempt(s): {text}")]))


@task("amr.execute_meter_task", queue=queues.AMR_ON_DEMAND, bind=True, max_retries=MAX_RETRIES,
      retry_backoff=5.0, retry_backoff_max=300.0, retry_for=RETRY_FOR, on_failure=_gave_up)
def execute_meter_task(ctx, meter: str | None = None, amr_task: str | None = None, slot: str | None = None,
                       round_id: str | None = None, task_call: str | None = None,
                       task_kwargs: dict | None = None, execution_type: str | None = None,
                       meter_device: str | None = None, meter_execution_type: str | None = None,
                       run_offset_seconds: float | None = None) -> dict:
    """Scheduled: `meter`, `amr_task`, `slot`, `round_id` (from dispatch). On demand: the platform's
    amr-tasks/invoke body verbatim (`meter_device` UUID or name, `task_call`, `task_kwargs`,
    `run_offset_seconds`, `meter_execution_type`), or `utilitarian poll`'s `meter`, `task_call`,
    `task_kwargs`, `execution_type` (default: the meter's).

    Stepwise (utilitarian/steps.py): the worker parks its waits (a pooled Modbus TCP answer, the
    commit outbox) without holding a thread; called directly it runs to its end and returns."""
    meter, execution_type = _invoke_body(meter, meter_device, execution_type, meter_execution_type)
    if _delay_on_demand(ctx, meter, amr_task, task_call, task_kwargs, execution_type, run_offset_seconds):
        return {"outcome": "deferred", "run_offset_seconds": run_offset_seconds}
    store = store_of(ctx.app)
    settings = settings_of(ctx.app)
    started = time.monotonic()
    label = amr_task or task_call or "?"
    etype = execution_type
    try:
        device, call, kwargs, etype, job_task = _resolve(store, meter, amr_task, task_call, task_kwargs,
                                                         execution_type)
        meter = device.name  # the invoke body may name it by UUID; readings carry the name
        target = _target(device)
        stamp = utc_now()
        if slot and amr_task and settings.stamp_scheduled_readings == "slot":
            try:
                stamp = _slot_time(slot)
            except ValueError:
                raise Reject(f"slot {slot!r} is not an ISO 8601 time") from None
        iface = device.interface
        if iface is not None and iface.can_block and iface.id is not None:
            lease = settings.interface_block_lease
            try:  # parked between tries: a busy bus holds no thread (blocking.take_interface)
                holder = yield from take_interface(store, iface.id, iface.name, ctx.id, lease=lease,
                                                   wait=settings.interface_wait)
            except InterfaceBusy as exc:
                countdown = settings.interface_defer * random.uniform(0.75, 1.5)
                log.debug("%s; job for %s deferred %.1fs", exc, meter, countdown)
                raise Defer(str(exc), countdown=countdown) from None
            with holding_interface(store, iface.id, iface.name, holder, lease=lease):
                result = yield from _poll(ctx.app, etype, call, target, kwargs, stamp, device, job_task)
        else:
            result = yield from _poll(ctx.app, etype, call, target, kwargs, stamp, device, job_task)
    except JobFailed as exc:
        metrics.POLLS.inc(metrics.protocol_of(etype), "failed")
        metrics.POLL_FAILURES.inc(metrics.protocol_of(etype), "job")
        yield from _finish(ctx, meter, amr_task, round_id, "failed", str(exc), started, events=[
            _event(ctx, meter, "Poll failed", f"{label}: {exc}")])
        return {"outcome": "failed", "error": str(exc)}
    except (MeterError, SoftTimeLimitExceeded) as exc:
        kind = getattr(exc, "kind", "timeout")
        text = f"{kind}: {exc}" if str(exc) else kind
        protocol = metrics.protocol_of(etype)
        metrics.POLL_FAILURES.inc(protocol, kind)
        metrics.POLL_SECONDS.observe(protocol, value=time.monotonic() - started)
        if isinstance(exc, RETRY_FOR) and ctx.retries < _max_retries(ctx):
            metrics.POLLS.inc(protocol, "retried")
            log.info("poll of %s (%s) failed (%s); attempt %d will be retried", meter, label, text, ctx.retries + 1)
            raise
        log.warning("poll of %s (%s) failed after %d attempt(s): %s", meter, label, ctx.retries + 1, text)
        metrics.POLLS.inc(protocol, "failed")
        yield from _finish(ctx, meter, amr_task, round_id, "failed", text, started, events=[
            _event(ctx, meter, "Poll failed", f"{label} after {ctx.retries + 1} attempt(s): {text}")])
        return {"outcome": "failed", "error": text}
    metrics.POLLS.inc(metrics.protocol_of(etype), "done")
    metrics.POLL_SECONDS.observe(metrics.protocol_of(etype), value=time.monotonic() - started)
    faultpoint("execute.after_poll")
    readings = [MeterReading(meter, r.series, r.timestamp, r.value, r.unit) for r in result.readings]
    events = [_event(ctx, meter, e.title, e.content, index=i) for i, e in enumerate(result.events)]
    yield from _finish(ctx, meter, amr_task, round_id, "done", None, started, readings=readings, events=events)
    faultpoint("execute.after_results")
    return {"outcome": "done", "readings": len(readings), "events": len(events)}


def _max_retries(ctx) -> int:
    try:
        return ctx.app.registry.get(ctx.name).retry.max_retries
    except Exception:  # a bare App in a script: the decorator's value
        return MAX_RETRIES


def _resolve(store, meter, amr_task, task_call, task_kwargs, execution_type):
    device, found = store.lookup_job(meter, amr_task)
    if device is None:
        raise JobFailed(f"meter {meter!r} is not in the registry")
    if not device.is_active:
        raise JobFailed(f"meter {meter!r} is not active")
    if amr_task:
        if found is None:
            raise JobFailed(f"AMR task {amr_task!r} no longer exists")
        return device, found.task_call, found.task_kwargs, found.meter_execution_type, found
    if not task_call:
        raise Reject("execute_meter_task needs amr_task or task_call")
    if task_kwargs is not None and not isinstance(task_kwargs, dict):
        raise Reject("task_kwargs must be an object")
    return device, task_call, dict(task_kwargs or {}), execution_type or device.execution_type, None


# Per-poll work kept by what it was computed from, so nothing here can go stale: a meter's
# target by the registry fields it comes from (its next round's polls parse no URL), a task's
# prepared call by the AmrTask object (the store gives the same object for the same task row).
_KEPT = 20_000
_targets: dict[tuple, object] = {}
_prepared: dict[int, tuple] = {}


def _target(device):
    can_block = device.interface is not None and device.interface.can_block
    key = (device.url, device.password, device.meter_type, device.config.timezone, can_block)
    target = _targets.get(key)
    if target is None:
        target = _new_target(device)
        if len(_targets) >= _KEPT:
            _targets.clear()
        _targets[key] = target
    return target


@functools.lru_cache(maxsize=64)
def _slot_time(slot: str):
    """parse_utc(slot), kept: every poll of a round carries the same slot."""
    return parse_utc(slot)


def _new_target(device):
    from utilitarian.amr.target import parse_meter_url

    # A can_block interface carries one session at a time, held under its interface_block for
    # one job: a connection kept open after the job would outlive that block.
    reuse = device.interface is None or not device.interface.can_block
    try:
        return parse_meter_url(device.url, secret=device.password, meter_type=device.meter_type,
                               timezone=device.config.timezone, reuse_connection=reuse)
    except ConfigError as exc:
        raise JobFailed(f"meter URL is invalid: {exc.reason}") from None


def _drivers():
    """(prepare_call, run_prepared_steps, apply_transformer_ratios), imported at the first poll:
    protocol drivers (pymodbus) must not load when the worker imports task modules. Kept after
    that: an import statement per poll is a few microseconds of nothing."""
    global _loaded
    if _loaded is None:
        from utilitarian.amr.environments import prepare_call, run_prepared_steps
        from utilitarian.amr.readings import apply_transformer_ratios

        _loaded = (prepare_call, run_prepared_steps, apply_transformer_ratios)
    return _loaded


_loaded = None


def _poll(app, execution_type, call, target, kwargs, stamp, device, task=None):
    _, run_prepared_steps, apply_transformer_ratios = _drivers()
    # `now` stamps current values (the slot); set_time and "last N seconds" reads go by the true
    # clock, else a job run late would set the meter to the slot's time.
    result = yield from run_prepared_steps(_prepare(task, execution_type, call, kwargs), target,
                                           meter_types=meter_types_of(app), now=stamp, clock=utc_now())
    return apply_transformer_ratios(result, ct_ratio=device.ct_ratio, vt_ratio=device.vt_ratio)


def _prepare(task, execution_type, call, kwargs):
    """The call checked and bound once per AmrTask (None: an on-demand call, prepared each time)."""
    prepare_call = _drivers()[0]
    if task is None:
        return prepare_call(execution_type, call, kwargs)
    hit = _prepared.get(id(task))
    if hit is not None and hit[0] is task and hit[1].current():
        return hit[1]
    prepared = prepare_call(execution_type, call, kwargs)
    if len(_prepared) >= _KEPT:
        _prepared.clear()
    _prepared[id(task)] = (task, prepared)  # the task is kept with it: its id is not reused meanwhile
    return prepared


def _invoke_body(meter, meter_device, execution_type, meter_execution_type):
    """The platform's invoke body names the meter `meter_device` and the environment
    `meter_execution_type`; our own producers say `meter` and `execution_type`."""
    if meter is not None and meter_device is not None and str(meter) != str(meter_device):
        raise Reject(f"meter {meter!r} and meter_device {meter_device!r} disagree")
    if execution_type and meter_execution_type and execution_type != meter_execution_type:
        raise Reject(f"execution_type {execution_type!r} and meter_execution_type "
                     f"{meter_execution_type!r} disagree")
    meter = meter if meter is not None else meter_device
    if not isinstance(meter, str) or not meter.strip():
        raise Reject("execute_meter_task needs meter (or the invoke body's meter_device)")
    return meter.strip(), execution_type or meter_execution_type


def _delay_on_demand(ctx, meter, amr_task, task_call, task_kwargs, execution_type, offset) -> bool:
    """An on-demand call with run_offset_seconds > 0 runs no earlier than that many seconds after
    it arrived: it is sent again with that ETA (and offset 0) unless its message has an ETA already
    (a producer that applied the offset itself). True when it was sent on."""
    if offset is None or amr_task:
        return False
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset < float("inf"):
        raise Reject(f"run_offset_seconds must be a number of seconds >= 0, not {offset!r}")
    if offset == 0 or ctx.eta is not None or (ctx.headers or {}).get("eta"):
        return False
    import datetime as dt

    eta = utc_now() + dt.timedelta(seconds=float(offset))
    ctx.send_task(ctx.name, kwargs={"meter": meter, "task_call": task_call, "task_kwargs": task_kwargs,
                                    "execution_type": execution_type, "run_offset_seconds": 0},
                  queue=ctx.queue or queues.AMR_ON_DEMAND, eta=eta,
                  task_id=uuid5_text(f"on-demand-offset\x00{ctx.id}"))
    log.info("on-demand %s for %s held back %gs (run_offset_seconds)", task_call, meter, offset)
    return True


def _event(ctx, meter: str, title: str, content: str, *, index: int = 0) -> dict:
    from utilitarian.amr.readings import SystemEvent

    event = SystemEvent.truncated(title, content)
    # Deterministic per job and attempt: a re-published commit stores each event once.
    return {"id": event_id(ctx.id, ctx.retries, index, event.title), "meter": meter, "title": event.title,
            "content": event.content, "timestamp": iso_utc(utc_now())}


def _finish(ctx, meter, amr_task, round_id, outcome, error, started, *, readings=(), events=()) -> None:
    """Hand everything the job produced to the commit outbox (batched with other jobs of this
    process); returns once it is committed (or the commit queues' broker confirmed it), so the job
    is acked only after that. Stepwise: it yields the wait for its group."""
    duration = round(time.monotonic() - started, 4)
    run = {"job_id": ctx.id, "meter": meter, "amr_task": amr_task, "round_id": round_id, "outcome": outcome,
           "error": (error or "")[:500] or None, "duration": duration, "attempts": ctx.retries + 1,
           "finished_at": iso_utc(utc_now())}
    for e in events:
        metrics.EVENTS.inc("poll_failed" if e.get("title") == "Poll failed" else "meter")
    yield from outbox_of(ctx.app).send_steps(readings=list(readings), events=list(events), run=run)
