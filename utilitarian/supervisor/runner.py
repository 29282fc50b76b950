"""Runs deliveries in a child's thread pool and settles each exactly once: count redeliveries (before
reading the body), decode or refuse, wait out ETAs in the delay levels, run the task, then ack,
retry or dead-letter. The rules are in `delivery.py`; time comes from injected clocks.

Time limits are checked on the settler thread: soft = an exception raised in the task's thread,
only while that thread still runs that task and never inside a shielded critical section
(`utilitarian.shield`); it surfaces when the thread next runs Python code, so a task blocked in
one long C call (a socket read without timeout) sees it only when that call returns; hard = the task is settled by policy on the settler (hooks included) and
the child retires (a thread cannot be killed). Any BaseException a task raises (SystemExit too)
is the task's failure, settled by its retry policy. Stepwise tasks (utilitarian/steps.py) run
step by step through `stepping.py`, parked between steps on no thread; they are settled here too."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from utilitarian import shield
from utilitarian.broker import redeliver
from utilitarian.broker.consumer import ACK, REQUEUE, Consumer, Delivery
from utilitarian.protocol import ProtocolError, TaskMessage, decode
from utilitarian.supervisor import delivery as rules
from utilitarian.supervisor.settler import Settler
from utilitarian.supervisor.stepping import HardTimeLimitExceeded, Stepping
from utilitarian.supervisor.stats import REFUSED_TASK, TaskStats
from utilitarian.supervisor.threads import TaskThreads
from utilitarian.tasks import MAX_DEFERRALS, Defer, Registry, SoftTimeLimitExceeded, TaskContext, TaskSpec

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
ETA_SLACK = rules.ETA_SLACK  # the rule lives in delivery.py; tests and tools read it here


def _utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(eq=False)
class Running:
    """One task on its thread; also the token its thread guard accepts injections for."""

    delivery: Delivery
    message: TaskMessage
    spec: TaskSpec
    guard: shield.ThreadGuard
    started: float
    settled: bool = False  # by its own thread, or by the settler at the hard limit (under the runner's lock)
    # A stepwise task (stepping.py): its generator, whether a step runs now, the wait's value to
    # resume with, an exception to throw in at its next step (all under the runner's lock).
    steps: object = None
    soft: bool = False  # it has a soft limit (its steps keep the thread guard)
    stepping: bool = False
    wake: object = None
    throw: BaseException | None = None
    label: str = ""  # "task[id]" for the log lines of its thread (each step sets it again)


class TaskRunner:
    def __init__(self, *, registry: Registry, app, consumer: Consumer, threads: int, stats: TaskStats,
                 max_deliveries: int, max_message_bytes: int, hard_time_limit: float | None,
                 task_local: threading.local, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], dt.datetime] = _utcnow, settler: Settler | None = None,
                 follow_up_backoff_cap: float = 30.0):
        self.registry = registry
        self.app = app
        self.consumer = consumer
        self.stats = stats
        self.max_deliveries = max_deliveries
        self.max_message_bytes = max_message_bytes
        self.hard_time_limit = hard_time_limit
        self.task_local = task_local
        self.clock = clock
        self.wall_clock = wall_clock
        self.rules = rules.DeliveryRules(follow_up_backoff_cap=follow_up_backoff_cap)
        self.settler = settler or Settler(self.check_time_limits, clock=clock, name="settler")
        self.executor = TaskThreads(self._handle, threads, name="task")
        self.stepping = Stepping(self)
        # Deliveries of stepwise tasks start on the step threads, not the task threads: their steps
        # are short and never block on the line, and a burst of them on the task threads woke a
        # dozen threads to take turns at the GIL (docs/benchmarks-amr.md, issue 16's seventh pass).
        self._stepwise = frozenset(name for name in registry.names() if registry.get(name).steps is not None)
        self._lock = threading.Lock()
        self.submitted = 0
        self.finished = 0
        self.abandoned = 0
        self.held = 0  # on the settler: abandoned and being settled, or waiting for a delayed requeue
        self.last_activity = clock()
        self.on_hard_limit = None  # called on the settler thread after a task was abandoned; must only record
        self.task_limit = 0  # at this many deliveries `on_task_limit` runs once, on the pump thread (0 = never)
        self.on_task_limit = None

    def start(self) -> None:
        self.settler.start()
        self.stepping.start()

    @property
    def dead_letter_failures(self) -> int:
        """Follow-up publishes (dead letters, retries, delays, counted copies) that failed."""
        return self.rules.follow_up_failures

    # --- pump thread -----------------------------------------------------------------------
    def submit(self, delivery: Delivery) -> None:
        with self._lock:
            self.submitted += 1
            reached = self.task_limit and self.submitted == self.task_limit
        self.last_activity = self.clock()
        headers = getattr(delivery.properties, "headers", None)
        # By the Celery `task` header, before the body is read: a message without it, or naming a
        # task that is not stepwise, starts on a task thread as before (decoded there, run or refused).
        stepwise = type(headers) is dict and headers.get("task") in self._stepwise
        (self.stepping.threads if stepwise else self.executor).submit(delivery)
        if reached and self.on_task_limit:
            # On the pump thread, at the delivery that reaches the limit: consumption stops now,
            # so only deliveries already on their way (fewer than the prefetch) run on top.
            self.on_task_limit()

    def in_flight(self) -> int:
        """Deliveries not settled yet, not counting abandoned ones (they are settled)."""
        with self._lock:
            return self.submitted - self.finished - self.abandoned + self.held

    def idle_for(self) -> float:
        return 0.0 if self.in_flight() else self.clock() - self.last_activity

    # --- settler thread ----------------------------------------------------------------------
    def check_time_limits(self, now: float) -> float | None:
        with self._lock:
            actions = self.rules.on_tick(now)
            for action in actions:
                if isinstance(action, rules.Close):  # decided and marked under one lock: it stays parked
                    action.key.settled = True
                    self.held += 1  # in flight until its hook ran and its follow-up is published
                    self.rules.on_finished(action.key)
            upcoming = self.rules.next_deadline()
        for action in actions:
            r: Running = action.key
            if isinstance(action, rules.Abandon):
                self._abandon(r, action.limit, now)
                continue
            if isinstance(action, rules.Close):
                self.stepping.close_at_hard_limit(r, action.limit, now)
                continue
            if r.steps is not None:
                with self._lock:
                    outcome = self.stepping.soft_limit(r)
                if outcome == "resume":
                    self.stepping.wake_now(r)
                    log.warning("task %s[%s] passed its soft time limit; SoftTimeLimitExceeded comes as "
                                "it resumes", r.message.task, r.message.id)
                    continue
            else:
                outcome = r.guard.raise_in(r, SoftTimeLimitExceeded)
            if outcome != "gone":
                log.warning("task %s[%s] passed its soft time limit; SoftTimeLimitExceeded %s", r.message.task,
                            r.message.id, "raised in it" if outcome == "raised" else
                            "comes when it leaves its critical section")
        return upcoming

    def _abandon(self, r: Running, limit: float, now: float) -> None:
        with self._lock:
            if r.settled:
                return
            r.settled = True
            self.abandoned += 1
            self.held += 1  # in flight until its hook ran and its follow-up is published: a drain waits
        log.error("task %s[%s] exceeded its hard time limit (%.1fs); settling it by its retry policy "
                  "and replacing this child", r.message.task, r.message.id, limit)
        if r.spec.steps is not None:  # its step thread is stuck: the others must not wait for it
            self.stepping.threads.write_off(r.delivery)
        if self.on_hard_limit:
            self.on_hard_limit(r)
        exc = HardTimeLimitExceeded(f"hard time limit of {limit:.1f}s exceeded")
        try:
            self._fail(r.delivery, r.message, r.spec, exc, now - r.started, reason="hard_time_limit")
        finally:
            with self._lock:
                self.held -= 1

    # --- task threads ----------------------------------------------------------------------
    def _handle(self, item) -> None:
        parked = False
        delivery = item.delivery if type(item) is Running else item
        try:
            if type(item) is Running:  # a stepwise task's wait ended: its next step
                parked = self.stepping.step(item)
            else:
                parked = self._process(item)
        except BaseException as exc:  # a bug of ours must not lose the message nor kill the thread
            log.error("internal error handling delivery %d from %s; requeueing it after a backoff",
                      delivery.delivery_tag, delivery.queue, exc_info=True)
            if type(item) is not Running or self.stepping.drop(item):
                self._requeue_later(delivery, "a follow-up (internal error)", f"{type(exc).__name__}: {exc}")
        finally:
            if not parked:  # a parked stepwise task stays in flight until its last step
                with self._lock:
                    self.finished += 1
            self.last_activity = self.clock()

    def _process(self, delivery: Delivery) -> bool:
        """True when the delivery is a stepwise task that parked (still in flight)."""
        props = delivery.properties
        # Counted before the body is read: a message that cannot even be decoded (and maybe not
        # dead-lettered either) must still end as poison instead of looping. A first delivery is
        # always decoded (the rule), so only a redelivery pays for the count.
        if delivery.redelivered:
            deliveries = redeliver.deliveries_of(props, True)
            verdict = rules.on_delivery(True, deliveries, self.max_deliveries)
        else:
            deliveries, verdict = None, rules.DECODE
        if verdict == rules.POISON:
            headers = delivery.headers
            log.error("task %s[%s] was delivered %d times without finishing (it may kill its worker); "
                      "dead-lettering it as poison", headers.get("task", "?"), headers.get("id", "?"), deliveries)
            if self._publish_then_ack(delivery, redeliver.dead_letter(
                    delivery.queue, delivery.body, props, reason="poison",
                    error=f"delivered {deliveries} times without being settled", attempts=deliveries,
                    now=self.wall_clock()), "a dead letter"):
                self.stats.record(delivery.queue, REFUSED_TASK, "refused")
            return
        if verdict == rules.COUNT:
            # The broker redelivers what a dead channel held: maybe this message killed its child.
            # Count it in a header (redelivered is only a flag) and give up after max_deliveries.
            self._publish_then_ack(delivery, redeliver.count_delivery(delivery.queue, delivery.body, props, deliveries),
                                   "a counted copy")
            return
        # The wall clock only matters for an ETA or an expiry (most messages carry neither).
        headers = props.headers if isinstance(props.headers, dict) else {}
        now = self.wall_clock() if headers.get("eta") or headers.get("expires") or not headers else None
        try:
            message = decode(delivery.body, content_type=props.content_type,
                             content_encoding=props.content_encoding, headers=props.headers, now=now,
                             max_bytes=self.max_message_bytes)
            spec = self.registry.get(message.task)
        except ProtocolError as exc:
            if deliveries is None:
                deliveries = redeliver.deliveries_of(props, delivery.redelivered)
            log.warning("refusing a message from %s (%s): %s; dead-lettering it", delivery.queue, exc.reason, exc)
            if self._publish_then_ack(delivery, redeliver.dead_letter(
                    delivery.queue, delivery.body, props, reason=exc.reason, error=str(exc), attempts=deliveries,
                    now=now or self.wall_clock()), "a dead letter"):
                self.stats.record(delivery.queue, REFUSED_TASK, "refused")
            return
        wait = rules.wait_for_eta(message.eta, now) if message.eta is not None else 0.0
        if wait:
            # Never hold a delivery to wait (consumer_timeout would close the channel):
            # hand it to the delay levels and ack.
            self._publish_then_ack(delivery, redeliver.later(delivery.queue, delivery.body, props, seconds=wait,
                                                             now=now), "a delayed copy")
            return False
        return self._run(delivery, message, spec)

    def _run(self, delivery: Delivery, message: TaskMessage, spec: TaskSpec) -> bool:
        soft, hard = rules.time_limits((message.soft_time_limit, message.time_limit),
                                       (spec.soft_time_limit, spec.time_limit), self.hard_time_limit)
        started = self.clock()
        r = Running(delivery, message, spec, shield.guard(), started, label=f"{message.task}[{message.id}]")
        if spec.steps is not None:
            r.soft = soft is not None
            with self._lock:
                self.rules.on_started(r, started, soft, hard)
            try:  # binds the arguments only: the task's code runs in its first step
                r.steps = self._call(spec.steps, spec, delivery, message)
            except BaseException as exc:
                self._end(r, exc)
                return False
            return self.stepping.step(r)
        error: BaseException | None = None
        r.guard.begin(r)  # from here the settler may raise the soft limit in this thread, for this task only
        try:
            try:
                with self._lock:
                    self.rules.on_started(r, started, soft, hard)
                self.task_local.task = r.label
                self._call(spec.func, spec, delivery, message)
            finally:
                r.guard.end()  # nothing meant for this task can arrive after this line
        except BaseException as exc:  # SystemExit too: the task's failure is data for its retry policy
            error = exc
        finally:
            self.task_local.task = None
        self._end(r, error)
        return False

    def _end(self, r: Running, error: BaseException | None) -> None:
        """Settle a task that returned or raised (once: not if the settler did at its hard limit)."""
        with self._lock:
            self.rules.on_finished(r)
            late = r.settled  # settled at the hard limit already; this thread came back late
            r.settled = True
            if late:
                self.abandoned -= 1  # counted as finished by _handle now
        if late:
            return
        delivery, message = r.delivery, r.message
        duration = self.clock() - r.started
        if error is None:
            self.consumer.settle(delivery, ACK)
            self.stats.record(delivery.queue, message.task, "done", duration)
        elif isinstance(error, Defer):
            self._defer(delivery, message, error, duration)
        else:
            if not isinstance(error, Exception):
                log.error("task %s[%s] raised %s (a BaseException): settling it as a failure",
                          message.task, message.id, type(error).__name__)
            self._fail(delivery, message, r.spec, error, duration)

    def _call(self, func, spec: TaskSpec, delivery: Delivery, message: TaskMessage):
        """`func` (the task, or its generator function) with the message's arguments, bound to a
        TaskContext first when the task asked for one."""
        if spec.bind:
            return func(self._context(delivery, message), *message.args, **message.kwargs)
        return func(*message.args, **message.kwargs)

    def _context(self, delivery: Delivery, message: TaskMessage) -> TaskContext:
        return TaskContext(id=message.id, name=message.task, retries=message.retries, queue=delivery.queue,
                           app=self.app, headers=message.headers, eta=message.eta, expires=message.expires)

    def _defer(self, delivery: Delivery, message: TaskMessage, defer: Defer, duration: float) -> None:
        count = int(message.headers.get(redeliver.DEFERRALS) or 0) + 1
        if count > MAX_DEFERRALS:
            self._fail(delivery, message, self.registry.get(message.task),
                       RuntimeError(f"deferred {count} times: {defer}"), duration, reason="deferred_too_often",
                       final=True)
            return
        log.info("task %s[%s] deferred for %.1fs: %s", message.task, message.id, defer.countdown, defer)
        if self._publish_then_ack(delivery, redeliver.later(delivery.queue, delivery.body, delivery.properties,
                                                            seconds=defer.countdown, now=self.wall_clock(),
                                                            extra={redeliver.DEFERRALS: count}), "a deferral"):
            self.stats.record(delivery.queue, message.task, "deferred", duration)

    def _fail(self, delivery: Delivery, message: TaskMessage, spec: TaskSpec, error: BaseException,
              duration: float, *, reason: str = "failed", final: bool = False) -> None:
        decision = spec.retry.decide(error, message.retries)
        text = f"{type(error).__name__}: {error}"
        if decision.action == "retry" and not final:
            log.warning("task %s[%s] failed (%s); retry %d of %d in %.1fs", message.task, message.id, text,
                        message.retries + 1, spec.retry.max_retries, decision.delay)
            out = redeliver.later(delivery.queue, delivery.body, delivery.properties, seconds=decision.delay,
                                  retries=message.retries + 1, now=self.wall_clock())
            if self._publish_then_ack(delivery, out, "a retry"):
                self.stats.record(delivery.queue, message.task, "retried", duration)
            return
        log.error("task %s[%s] failed for good (%s; %s); dead-lettering it", message.task, message.id, text,
                  decision.reason or reason, exc_info=error if not isinstance(error, HardTimeLimitExceeded) else None)
        if spec.on_failure is not None:
            try:  # best effort: the dead letter below keeps the message whatever the hook does
                spec.on_failure(self._context(delivery, message), error, message.args, message.kwargs)
            except Exception:
                log.exception("on_failure of %s[%s] failed", message.task, message.id)
        out = redeliver.dead_letter(delivery.queue, delivery.body, delivery.properties,
                                    reason=reason if reason != "failed" else (decision.reason or reason),
                                    error=text, attempts=message.retries + 1, now=self.wall_clock())
        if self._publish_then_ack(delivery, out, "a dead letter"):
            self.stats.record(delivery.queue, message.task, "failed", duration)

    def _publish_then_ack(self, delivery: Delivery, outgoing, what: str) -> bool:
        """Ack only once what replaces the delivery is confirmed; if that publish fails the
        delivery is requeued after a backoff, so the message exists at least once either way."""
        try:
            self.app.publisher.publish(outgoing)
        except Exception as exc:
            self._requeue_later(delivery, what, str(exc))
            return False
        with self._lock:
            line = self.rules.on_follow_up_published(self.clock(), what)
        if line:
            log.info("%s", line)
        self.consumer.settle(delivery, ACK)
        return True

    def _requeue_later(self, delivery: Delivery, what: str, error: str) -> None:
        with self._lock:
            decision = self.rules.on_follow_up_failed(self.clock(), what, error)
            self.held += 1
        if decision.log:
            log.error("%s", decision.log)
        self.settler.call_at(self.clock() + decision.delay, lambda: self._requeue_now(delivery))

    def _requeue_now(self, delivery: Delivery) -> None:
        try:
            self.consumer.settle(delivery, REQUEUE)
        finally:
            with self._lock:
                self.held -= 1

    def drain(self) -> None:
        """Stopping: held deliveries go back to the queue now instead of after their backoff."""
        self.settler.flush_timers()

    def shutdown(self) -> None:
        self.settler.stop()
        self.stepping.stop()
        self.executor.shutdown()
