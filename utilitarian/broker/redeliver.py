"""Messages a worker sends on behalf of a delivery it settles: retries (same id, retries+1,
through the delay levels), re-delays (ETA not reached), poison counting and dead letters."""

from __future__ import annotations

import datetime as dt
import socket

from utilitarian import queues
from utilitarian.broker import delay
from utilitarian.broker.publisher import Outgoing

UTC = dt.timezone.utc

# Headers we add. Kept without the `x-` prefix, which RabbitMQ uses for its own.
DEAD_REASON = "dead_letter_reason"
DEAD_QUEUE = "dead_letter_queue"
DEAD_ERROR = "dead_letter_error"
DEAD_ATTEMPTS = "dead_letter_attempts"
DEAD_AT = "dead_letter_at"
DEAD_HOST = "dead_letter_host"
DELIVERIES = "utilitarian_deliveries"  # how often this message reached a worker (poison check)
DEFERRALS = "utilitarian_deferrals"
OURS = (DEAD_REASON, DEAD_QUEUE, DEAD_ERROR, DEAD_ATTEMPTS, DEAD_AT, DEAD_HOST, DELIVERIES)

_COPIED = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
           "timestamp", "type", "app_id")  # not user_id: the broker rejects one that is not ours


def copy_properties(properties, headers: dict | None = None) -> dict:
    """A pika BasicProperties as a dict for republishing, with `headers` replaced if given."""
    props = {name: getattr(properties, name, None) for name in _COPIED}
    props = {k: v for k, v in props.items() if v is not None}
    props["headers"] = delay.strip_death_headers(
        dict(getattr(properties, "headers", None) or {}) if headers is None else headers)
    props.setdefault("delivery_mode", 2)
    return props


def _headers(properties) -> dict:
    return delay.strip_death_headers(dict(getattr(properties, "headers", None) or {}))


def dead_letter(queue: str, body: bytes, properties, *, reason: str, error: str, attempts: int,
                now: dt.datetime | None = None) -> Outgoing:
    headers = _headers(properties)
    headers.update({
        DEAD_REASON: reason,
        DEAD_QUEUE: queue,
        DEAD_ERROR: error[:2000],
        DEAD_ATTEMPTS: attempts,
        DEAD_AT: (now or dt.datetime.now(UTC)).isoformat(),
        DEAD_HOST: socket.gethostname(),
    })
    return Outgoing("", queues.DEAD_LETTER, body, copy_properties(properties, headers))


COUNT_DELAY = 0.2  # seconds: the ack of the original is on the wire long before the copy is back


def count_delivery(queue: str, body: bytes, properties, deliveries: int) -> Outgoing:
    """The same message back on its queue, carrying how often it was delivered so far.

    It comes back through the delay levels, not straight to the queue: straight back, the copy
    could reach this very child and wedge it (it may be the poison) before the ack of the
    original was flushed, and then both would be redelivered."""
    headers = _headers(properties)
    headers[DELIVERIES] = deliveries
    exchange, key = delay.route(queue, COUNT_DELAY)
    return Outgoing(exchange, key, body, copy_properties(properties, headers))


def deliveries_of(properties, redelivered: bool) -> int:
    """Deliveries including this one: our counter (carried by republished copies), plus the
    broker's count of earlier deliveries of this very message where it keeps one (quorum queues:
    x-delivery-count, which also counts redeliveries the worker never got to handle), else one
    when the broker says redelivered (classic queues only have the flag)."""
    headers = getattr(properties, "headers", None) or {}
    counted = headers.get(DELIVERIES)
    counted = counted if isinstance(counted, int) and not isinstance(counted, bool) and counted > 0 else 1
    earlier = headers.get(delay.BROKER_COUNT)
    if isinstance(earlier, int) and not isinstance(earlier, bool) and earlier >= 0:
        return counted + earlier
    return counted + (1 if redelivered else 0)


def later(queue: str, body: bytes, properties, *, seconds: float, now: dt.datetime | None = None,
          retries: int | None = None, extra: dict | None = None) -> Outgoing:
    """The message again after `seconds`: a retry (pass `retries`) or a re-delay (ETA not yet
    reached, or deferred). Same task id; `eta` set so a Celery consumer waits too."""
    now = now or dt.datetime.now(UTC)
    headers = _headers(properties)
    headers.pop(DELIVERIES, None)
    if retries is not None:
        headers["retries"] = retries
    headers["eta"] = (now + dt.timedelta(seconds=max(0.0, seconds))).isoformat()
    if extra:
        headers.update(extra)
    exchange, key = delay.route(queue, seconds)
    return Outgoing(exchange, key, body, copy_properties(properties, headers))


def replay(body: bytes, properties) -> tuple[str, Outgoing]:
    """A dead letter back onto its origin queue with a fresh retry budget."""
    headers = _headers(properties)
    origin = headers.get(DEAD_QUEUE) or queues.DEFAULT
    for key in OURS:
        headers.pop(key, None)
    headers.pop(DEFERRALS, None)
    if "retries" in headers:
        headers["retries"] = 0
    return origin, Outgoing("", origin, body, copy_properties(properties, headers))
