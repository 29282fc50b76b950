"""Runs deliveries in a child's thread pool and settles each exactly once: decode or refuse,
count poison redeliveries, wait out ETAs in the delay levels, run the task, then ack, retry or
dead-letter. Time limits: soft = an exception raised in the task's thread; hard = the task is
settled by policy and the child retires (a thread cannot be killed)."""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from utilitarian.broker import redeliver
from utilitarian.broker.consumer import ACK, REQUEUE, Consumer, Delivery
from utilitarian.protocol import ProtocolError, TaskMessage, decode
from utilitarian.supervisor.stats import REFUSED_TASK, TaskStats
from utilitarian.tasks import MAX_DEFERRALS, Defer, Registry, SoftTimeLimitExceeded, TaskContext, TaskSpec

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
ETA_SLACK = 0.05  # run a task whose ETA is this close rather than bounce it through the delay levels


class HardTimeLimitExceeded(Exception):
    """The task ran past its hard limit; its thread was abandoned and the child replaced."""


@dataclass(eq=False)
class Running:
    delivery: Delivery
    message: TaskMessage
    spec: TaskSpec
    thread_id: int
    started: float
    soft_deadline: float | None
    hard_deadline: float | None
    soft_fired: bool = False
    settled: bool = False  # by its own thread, or by the pump at the hard limit
    lock: threading.Lock = field(default_factory=threading.Lock)


class TaskRunner:
    def __init__(self, *, registry: Registry, app, consumer: Consumer, threads: int, stats: TaskStats,
                 max_deliveries: int, max_message_bytes: int, hard_time_limit: float | None,
                 task_local: threading.local):
        self.registry = registry
        self.app = app
        self.consumer = consumer
        self.stats = stats
        self.max_deliveries = max_deliveries
        self.max_message_bytes = max_message_bytes
        self.hard_time_limit = hard_time_limit
        self.task_local = task_local
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="task")
        self._lock = threading.Lock()
        self.submitted = 0
        self.finished = 0
        self.abandoned = 0
        self.running: dict[int, Running] = {}
        self.last_activity = time.monotonic()
        self.on_hard_limit = None  # called on the pump thread after a task was abandoned
        self.task_limit = 0  # at this many deliveries `on_task_limit` runs once, on the pump thread (0 = never)
        self.on_task_limit = None

    # --- pump thread -----------------------------------------------------------------------
    def submit(self, delivery: Delivery) -> None:
        with self._lock:
            self.submitted += 1
            reached = self.task_limit and self.submitted == self.task_limit
        self.last_activity = time.monotonic()
        self.executor.submit(self._handle, delivery)
        if reached and self.on_task_limit:
            # On the pump thread, at the delivery that reaches the limit: consumption stops now,
            # so only deliveries already on their way (fewer than the prefetch) run on top.
            self.on_task_limit()

    def in_flight(self) -> int:
        """Deliveries being worked on, not counting abandoned ones (they are settled)."""
        with self._lock:
            return self.submitted - self.finished - self.abandoned

    def idle_for(self) -> float:
        return 0.0 if self.in_flight() else time.monotonic() - self.last_activity

    def check_time_limits(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            running = list(self.running.values())
        for r in running:
            if r.settled:
                continue
            if r.hard_deadline is not None and now >= r.hard_deadline:
                self._abandon(r)
            elif r.soft_deadline is not None and now >= r.soft_deadline and not r.soft_fired:
                r.soft_fired = True
                log.warning("task %s[%s] passed its soft time limit; raising SoftTimeLimitExceeded in it",
                            r.message.task, r.message.id)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(r.thread_id),
                                                           ctypes.py_object(SoftTimeLimitExceeded))

    def _abandon(self, r: Running) -> None:
        with r.lock:
            if r.settled:
                return
            r.settled = True
        with self._lock:
            self.abandoned += 1
        limit = r.hard_deadline - r.started
        exc = HardTimeLimitExceeded(f"hard time limit of {limit:.1f}s exceeded")
        log.error("task %s[%s] exceeded its hard time limit (%.1fs); settling it by its retry policy "
                  "and replacing this child", r.message.task, r.message.id, limit)
        self._fail(r.delivery, r.message, r.spec, exc, time.monotonic() - r.started, reason="hard_time_limit")
        if self.on_hard_limit:
            self.on_hard_limit(r)

    # --- task threads ----------------------------------------------------------------------
    def _handle(self, delivery: Delivery) -> None:
        try:
            self._process(delivery)
        except Exception:  # a bug of ours must not lose the message nor kill the thread
            log.exception("internal error handling delivery %d from %s; requeueing it",
                          delivery.delivery_tag, delivery.queue)
            self.consumer.settle(delivery, REQUEUE)
        finally:
            with self._lock:
                self.finished += 1
            self.last_activity = time.monotonic()

    def _process(self, delivery: Delivery) -> None:
        props = delivery.properties
        now = dt.datetime.now(UTC)
        deliveries = redeliver.deliveries_of(props, delivery.redelivered)
        try:
            message = decode(delivery.body, content_type=props.content_type,
                             content_encoding=props.content_encoding, headers=props.headers, now=now,
                             max_bytes=self.max_message_bytes)
            spec = self.registry.get(message.task)
        except ProtocolError as exc:
            log.warning("refusing a message from %s (%s): %s; dead-lettering it", delivery.queue, exc.reason, exc)
            self._publish_then_ack(delivery, redeliver.dead_letter(
                delivery.queue, delivery.body, props, reason=exc.reason, error=str(exc), attempts=deliveries))
            self.stats.record(delivery.queue, REFUSED_TASK, "refused")
            return
        if delivery.redelivered:
            self._on_redelivery(delivery, message, deliveries)
            return
        if message.eta is not None:
            wait = (message.eta - now).total_seconds()
            if wait > ETA_SLACK:
                # Never hold a delivery to wait (consumer_timeout would close the channel):
                # hand it to the delay levels and ack.
                self._publish_then_ack(delivery, redeliver.later(delivery.queue, delivery.body, props,
                                                                 seconds=wait, now=now))
                return
        self._run(delivery, message, spec)

    def _on_redelivery(self, delivery: Delivery, message: TaskMessage, deliveries: int) -> None:
        # The broker redelivers what a dead channel held: maybe this message killed its child.
        # Count it in a header (redelivered is only a flag) and give up after max_deliveries.
        if deliveries > self.max_deliveries:
            log.error("task %s[%s] was delivered %d times without finishing (it may kill its worker); "
                      "dead-lettering it as poison", message.task, message.id, deliveries)
            self._publish_then_ack(delivery, redeliver.dead_letter(
                delivery.queue, delivery.body, delivery.properties, reason="poison",
                error=f"delivered {deliveries} times without being settled", attempts=deliveries))
            self.stats.record(delivery.queue, REFUSED_TASK, "refused")
            return
        self._publish_then_ack(delivery, redeliver.count_delivery(delivery.queue, delivery.body,
                                                                  delivery.properties, deliveries))

    def _run(self, delivery: Delivery, message: TaskMessage, spec: TaskSpec) -> None:
        started = time.monotonic()
        hard = message.time_limit or spec.time_limit or self.hard_time_limit
        soft = message.soft_time_limit or spec.soft_time_limit
        r = Running(delivery, message, spec, threading.get_ident(), started,
                    started + soft if soft else None, started + hard if hard else None)
        with self._lock:
            self.running[r.thread_id] = r
        self.task_local.task = f"{message.task}[{message.id}]"
        error: BaseException | None = None
        try:
            args = message.args
            if spec.bind:
                spec.func(self._context(delivery, message), *args, **message.kwargs)
            else:
                spec.func(*args, **message.kwargs)
        except Exception as exc:  # the task's failure is data for its retry policy
            error = exc
        finally:
            self.task_local.task = None
            with self._lock:
                self.running.pop(r.thread_id, None)
        with r.lock:
            late = r.settled  # settled at the hard limit already; this thread came back late
            r.settled = True
        if late:
            with self._lock:
                self.abandoned -= 1  # counted as finished by _handle now
            return
        duration = time.monotonic() - started
        if error is None:
            self.consumer.settle(delivery, ACK)
            self.stats.record(delivery.queue, message.task, "done", duration)
        elif isinstance(error, Defer):
            self._defer(delivery, message, error, duration)
        else:
            self._fail(delivery, message, spec, error, duration)

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
        self._publish_then_ack(delivery, redeliver.later(delivery.queue, delivery.body, delivery.properties,
                                                         seconds=defer.countdown,
                                                         extra={redeliver.DEFERRALS: count}))
        self.stats.record(delivery.queue, message.task, "deferred", duration)

    def _fail(self, delivery: Delivery, message: TaskMessage, spec: TaskSpec, error: BaseException,
              duration: float, *, reason: str = "failed", final: bool = False) -> None:
        decision = spec.retry.decide(error, message.retries)
        text = f"{type(error).__name__}: {error}"
        if decision.action == "retry" and not final:
            log.warning("task %s[%s] failed (%s); retry %d of %d in %.1fs", message.task, message.id, text,
                        message.retries + 1, spec.retry.max_retries, decision.delay)
            out = redeliver.later(delivery.queue, delivery.body, delivery.properties, seconds=decision.delay,
                                  retries=message.retries + 1)
            self._publish_then_ack(delivery, out)
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
                                    error=text, attempts=message.retries + 1)
        self._publish_then_ack(delivery, out)
        self.stats.record(delivery.queue, message.task, "failed", duration)

    def _publish_then_ack(self, delivery: Delivery, outgoing) -> None:
        """Ack only once what replaces the delivery is confirmed; if that publish fails the
        delivery is requeued, so the message exists at least once either way."""
        try:
            self.app.publisher.publish(outgoing)
        except Exception as exc:
            log.error("could not publish the follow-up of delivery %d (%s); requeueing it", delivery.delivery_tag, exc)
            self.consumer.settle(delivery, REQUEUE)
            return
        self.consumer.settle(delivery, ACK)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=False)
