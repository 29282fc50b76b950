"""The child's delivery rules, pure (no I/O, time passed in): what to do with a delivery before
its body is read, which time limits a task gets, which running tasks passed a limit, and how
long to wait before requeueing a delivery whose follow-up message could not be published.
The runner and the settler thread carry the decisions out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from utilitarian.broker.connection import Backoff

# Before decoding (a body that cannot be decoded must still be counted, or it loops forever):
POISON = "poison"  # delivered too often without being settled: dead-letter it unread
COUNT = "count"  # redelivered: republish a copy carrying the count, ack this one
DECODE = "decode"  # first delivery (or a counted copy): read it and go on

ETA_SLACK = 0.05  # run a task whose ETA is this close rather than bounce it through the delay levels
FOLLOW_UP_REPORT_INTERVAL = 10.0  # at most one log line per this many seconds while publishes fail


def on_delivery(redelivered: bool, deliveries: int, max_deliveries: int) -> str:
    """`deliveries` counts this one (our header plus the broker's redelivered flag)."""
    if not redelivered:
        return DECODE
    if deliveries > max_deliveries:
        return POISON
    return COUNT


def wait_for_eta(eta: dt.datetime | None, now: dt.datetime) -> float:
    """Seconds to hand to the delay levels (never hold a delivery to wait: consumer_timeout
    would close the channel), or 0.0 to run now."""
    if eta is None:
        return 0.0
    wait = (eta - now).total_seconds()
    return wait if wait > ETA_SLACK else 0.0


def time_limits(message: tuple[float | None, float | None], task: tuple[float | None, float | None],
                default_hard: float | None) -> tuple[float | None, float | None]:
    """(soft, hard) seconds: the message's own limits (Celery `timelimit` header) over the task's
    over the pool's default hard limit. A soft limit at or past the hard one would never fire."""
    soft = message[0] or task[0]
    hard = message[1] or task[1] or default_hard
    if soft is not None and hard is not None and soft >= hard:
        soft = None
    return soft, hard


@dataclass(frozen=True)
class SoftLimit:
    key: object


@dataclass(frozen=True)
class Abandon:
    key: object
    limit: float


@dataclass(frozen=True)
class Close:
    """A stepwise task parked in the wait loop passed its hard limit: close its generator and
    settle it by policy. No thread is lost, so unlike Abandon the child stays."""

    key: object
    limit: float


@dataclass(frozen=True)
class RequeueLater:
    delay: float
    log: str | None  # a line to log at ERROR, at most once per report interval


@dataclass
class _Clock:
    started: float
    soft_deadline: float | None
    hard_deadline: float | None
    soft_fired: bool = False
    abandoned: bool = False
    parked: bool = False  # a stepwise task waiting in the wait loop, on no thread


class DeliveryRules:
    """Running tasks' deadlines and the follow-up failure backoff. Not thread-safe by itself:
    the runner calls it under its lock."""

    def __init__(self, *, follow_up_backoff_first: float = 1.0, follow_up_backoff_cap: float = 30.0,
                 report_interval: float = FOLLOW_UP_REPORT_INTERVAL):
        self.running: dict[object, _Clock] = {}
        self.follow_up_backoff_first = follow_up_backoff_first
        self.follow_up_backoff_cap = follow_up_backoff_cap
        self.report_interval = report_interval
        self.follow_up_failures = 0  # cumulative
        # One backoff per kind of follow-up ("a dead letter", "a retry", ...): the counted copy of
        # an undeliverable message publishing fine must not reset the dead letter's backoff.
        self._backoffs: dict[str, Backoff] = {}
        self._unreported = 0
        self._last_report: float | None = None

    # --- time limits --------------------------------------------------------------------------
    def on_started(self, key: object, now: float, soft: float | None, hard: float | None) -> None:
        self.running[key] = _Clock(now, now + soft if soft else None, now + hard if hard else None)

    def on_finished(self, key: object) -> None:
        self.running.pop(key, None)

    def on_parked(self, key: object) -> None:
        """A stepwise task gave up its thread to wait (supervisor/waits.py)."""
        c = self.running.get(key)
        if c is not None:
            c.parked = True

    def on_resumed(self, key: object) -> None:
        """A stepwise task runs a step on a thread again."""
        c = self.running.get(key)
        if c is not None:
            c.parked = False

    def on_tick(self, now: float) -> list[SoftLimit | Abandon | Close]:
        """Each limit fires once: the hard one abandons the task (its thread cannot be killed),
        or closes it when it is parked on no thread; the soft one asks for an exception in the
        task (raised in its thread, or thrown into a parked task as it resumes)."""
        actions: list[SoftLimit | Abandon | Close] = []
        for key, c in self.running.items():
            if c.abandoned:
                continue
            if c.hard_deadline is not None and now >= c.hard_deadline:
                c.abandoned = True
                limit = c.hard_deadline - c.started
                actions.append(Close(key, limit) if c.parked else Abandon(key, limit))
            elif c.soft_deadline is not None and now >= c.soft_deadline and not c.soft_fired:
                c.soft_fired = True
                actions.append(SoftLimit(key))
        return actions

    def next_deadline(self) -> float | None:
        """The earliest limit still to fire (the settler sleeps until then at most)."""
        times = []
        for c in self.running.values():
            if c.abandoned:
                continue
            if c.soft_deadline is not None and not c.soft_fired:
                times.append(c.soft_deadline)
            if c.hard_deadline is not None:
                times.append(c.hard_deadline)
        return min(times) if times else None

    # --- follow-up publishes (dead letters, retries, delays, counted copies) ------------------------
    def on_follow_up_failed(self, now: float, what: str, error: str) -> RequeueLater:
        """The message replacing a delivery could not be published (dead-letter queue missing,
        publish refused): requeue the delivery after a capped backoff, never at once (that is a
        hot loop), and say so at most once per report interval."""
        self.follow_up_failures += 1
        self._unreported += 1
        backoff = self._backoffs.get(what)
        if backoff is None:
            backoff = self._backoffs[what] = Backoff(first=self.follow_up_backoff_first, cap=self.follow_up_backoff_cap)
        delay = backoff.next_delay()
        line = None
        if self._last_report is None or now - self._last_report >= self.report_interval:
            line = (f"could not publish {what} ({error}); {self._unreported} delivery(ies) requeued after a backoff "
                    f"since the last report, next in {delay:.1f}s (up to {backoff.cap:.0f}s)")
            self._unreported = 0
            self._last_report = now
        return RequeueLater(delay, line)

    def on_follow_up_published(self, now: float, what: str) -> str | None:
        backoff = self._backoffs.pop(what, None)
        if backoff is None:
            return None
        return f"{what} was published again ({self.follow_up_failures} follow-up publish(es) failed so far)"
