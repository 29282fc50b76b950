"""What a consumer does when the broker refuses, drops or cancels it: pure rules (time passed in,
no I/O) that the pump thread carries out.

The exit-code contract (gunicorn's `booted` rule): a refusal while booting (credentials, vhost
access, a queue declared with other arguments) is a configuration fault, exit 78, and systemd
stops the unit. Once the child consumed, or when its master says a sibling was ready already
(`boot_may_fail=False`), the same refusals are transient states (a vhost restarting, access
briefly revoked by a deploy, a queue missing after a blip): retried with capped backoff, logged
once per change of state, shown as `why` in the heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass

from utilitarian.broker.connection import Backoff
from utilitarian.errors import EX_CONFIG, AuthenticationRefused, BrokerUnavailable, TLSRefused, TopologyError

# Kinds of trouble, from our translated exceptions.
UNREACHABLE = "unreachable"  # connection refused or dropped, vhost down, broker restarting
REFUSED = "refused"  # credentials, vhost access, TLS certificate
MISSING = "missing"  # 404: a queue or exchange we need is gone; declaring it again fixes that
MISMATCH = "mismatch"  # 406 (other arguments) or 403 on a declare
CANCELLED = "cancelled"  # the broker cancelled a consumer (queue deleted, its node down)

_WHY = {UNREACHABLE: "broker unreachable", REFUSED: "access refused", MISSING: "queue missing",
        MISMATCH: "topology refused", CANCELLED: "consumer cancelled by the broker"}


def classify(err: BaseException) -> str:
    if isinstance(err, (AuthenticationRefused, TLSRefused)):
        return REFUSED
    if isinstance(err, TopologyError):
        return MISSING if getattr(err, "reply_code", None) == 404 else MISMATCH
    if isinstance(err, BrokerUnavailable):
        return UNREACHABLE
    return UNREACHABLE  # anything else from the connection: retry, the loop logs it


@dataclass(frozen=True)
class Retry:
    """Reconnect (or re-consume) at `at`; `redeclare`: declare the whole topology first."""

    at: float
    delay: float
    redeclare: bool
    log: str | None  # a line to log at WARNING (None: same state as last time, stay quiet)


@dataclass(frozen=True)
class Exit:
    code: int
    reason: str


class ConnectionRules:
    """State of one consumer's link to the broker: booting or having consumed, why it is not
    consuming now, cumulative reconnects and cancels, the backoff."""

    def __init__(self, *, boot_may_fail: bool = True, backoff_first: float = 0.5, backoff_cap: float = 30.0):
        self.boot_may_fail = boot_may_fail
        self.backoff = Backoff(first=backoff_first, cap=backoff_cap)
        self.consumed = False  # consumed at least once since this process started
        self.why: str | None = "connecting"
        self.reconnects = 0  # times consuming resumed after a loss
        self.cancels = 0  # consumer cancels sent by the broker
        self.redeclare = False  # the next open declares the whole topology
        self._logged: tuple[str, str] | None = None  # (kind, text) of the last warning
        self._lost_since: float | None = None

    # --- events ---------------------------------------------------------------------------
    def on_open_failed(self, now: float, err: BaseException) -> Retry | Exit:
        kind = classify(err)
        if self._lost_since is None:
            self._lost_since = now
        if kind in (REFUSED, MISMATCH) and not self.consumed and self.boot_may_fail:
            return Exit(EX_CONFIG, str(err))
        return self._retry(now, kind, str(err))

    def on_connection_lost(self, now: float, err: BaseException) -> Retry:
        """The live connection or channel failed: always worth a line (consuming stopped)."""
        if self._lost_since is None:
            self._lost_since = now
        self._logged = None
        retry = self._retry(now, classify(err), str(err))
        return Retry(retry.at, retry.delay, retry.redeclare,
                     f"connection lost ({err}); tasks in flight finish but their messages will be redelivered; "
                     f"reconnecting in {retry.delay:.1f}s")

    def on_cancel(self, now: float, queue: str) -> Retry:
        """The broker cancelled our consumer of `queue`: declare it again and consume it after a
        backoff (the queue may come back, or its node may)."""
        self.cancels += 1
        if self._lost_since is None:
            self._lost_since = now
        return self._retry(now, CANCELLED, f"queue {queue}", redeclare=True)

    def on_consuming(self, now: float) -> str | None:
        """Consuming (again): returns a line to log at INFO when this ends a failure state."""
        line = None
        if self.consumed and self._logged is not None:
            down = f" after {now - self._lost_since:.1f}s" if self._lost_since is not None else ""
            line = f"consuming again{down} ({_WHY[self._logged[0]]} before)"
        if self.consumed:
            self.reconnects += 1
        self.consumed = True
        self.why = None
        self.redeclare = False
        self.backoff.reset()
        self._logged = None
        self._lost_since = None
        return line

    def on_resumed(self, now: float) -> str | None:
        """Every cancelled consumer consumes again (the connection stayed up)."""
        return self.on_consuming(now) if self._logged is not None else None

    # --- helpers ----------------------------------------------------------------------------
    def _retry(self, now: float, kind: str, text: str, *, redeclare: bool = False) -> Retry:
        delay = self.backoff.next_delay()
        if kind in (MISSING, CANCELLED) or redeclare:
            self.redeclare = True
        self.why = f"{_WHY[kind]}: {text}"
        state = (kind, text)
        line = None
        if state != self._logged:
            self._logged = state
            after = "consuming resumes by itself" if self.consumed or not self.boot_may_fail else "retrying"
            line = f"{self.why}; {after}, next attempt in {delay:.1f}s (backoff up to {self.backoff.cap:.0f}s)"
        return Retry(at=now + delay, delay=delay, redeclare=self.redeclare, log=line)
