"""Delayed delivery (ETA, countdown, retry backoff) without holding unacked messages.

A message waits in broker queues whose TTL is fixed per queue, so it never waits behind a later
one: level n holds messages for 2**n ticks. The routing key spells the delay in binary, one word
per level, followed by the target queue; topic bindings send a message through the levels whose
bit is set, and the last exchange delivers it to its queue by name. The wait survives broker
restarts (durable queues, persistent messages) and consumer disconnects (nobody holds it).

As quorum queues the levels dead-letter at-least-once (RabbitMQ >= 3.10): a message leaves a level
only once the next queue confirmed it, so losing a node between two levels loses nothing. That mode
needs `x-overflow: reject-publish`; the levels have no length limit, so nothing is ever rejected.
"""

from __future__ import annotations

import math

TICK = 0.1  # seconds per unit of delay: the precision of ETAs and retries
LEVELS = 24  # 2**24 ticks = 19.4 days; a longer delay is re-delayed on arrival
PREFIX = "utilitarian.delay"
DELIVER_EXCHANGE = f"{PREFIX}.deliver"


def level_exchange(level: int) -> str:
    return f"{PREFIX}.L{level:02d}"


def level_queue(level: int) -> str:
    return f"{PREFIX}.L{level:02d}"


def entry_exchange() -> str:
    """Publish delayed messages here (the highest level)."""
    return level_exchange(LEVELS - 1)


def ticks_for(seconds: float) -> int:
    """Whole ticks, rounded up so a message never arrives before its time."""
    if seconds <= 0:
        return 0
    return min(2 ** LEVELS - 1, math.ceil(round(seconds / TICK, 6)))


def routing_key(queue: str, seconds: float) -> str:
    """`b23.b22...b0.<queue>` with each bit as a word "0" or "1". Refuses a `queue` that is itself
    such a key: the last level could deliver that to no queue, and the broker drops what a
    dead-lettering exchange cannot route (a follow-up must name the queue its delivery came from)."""
    if target_of(queue) is not None:
        raise ValueError(f"{queue[:80]!r}... is a delay routing key, not a queue")
    ticks = ticks_for(seconds)
    bits = ".".join("1" if ticks >> level & 1 else "0" for level in range(LEVELS - 1, -1, -1))
    return f"{bits}.{queue}"


def route(queue: str, seconds: float) -> tuple[str, str]:
    """(exchange, routing key) that delivers to `queue` after `seconds`."""
    return entry_exchange(), routing_key(queue, seconds)


def _bit_pattern(level: int, bit: str) -> str:
    # Words before this level's bit are the higher levels; `#` covers lower bits and the queue.
    return "*." * (LEVELS - 1 - level) + bit + ".#"


def level_arguments(level: int, queue_type: str = "classic") -> dict:
    """The arguments of level `level`'s queue: its TTL and where it dead-letters to."""
    arguments = {
        "x-message-ttl": int(round((2 ** level) * TICK * 1000)),
        "x-dead-letter-exchange": level_exchange(level - 1) if level else DELIVER_EXCHANGE,
    }
    if queue_type == "quorum":
        arguments.update({"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                          "x-overflow": "reject-publish"})
    return arguments


def level_of(queue: str) -> int | None:
    """The level of a delay queue name, None for any other name."""
    prefix = f"{PREFIX}.L"
    if queue.startswith(prefix) and queue[len(prefix):].isdigit():
        level = int(queue[len(prefix):])
        return level if 0 <= level < LEVELS and queue == level_queue(level) else None
    return None


def target_of(routing_key: str) -> str | None:
    """The queue a delayed message is on its way to (the words after the 24 bits), or None."""
    words = routing_key.split(".", LEVELS)
    if len(words) != LEVELS + 1 or any(w not in ("0", "1") for w in words[:LEVELS]):
        return None
    return words[LEVELS] or None


def declare(channel, target_queues, queue_type: str = "classic", *, declare=None) -> None:
    """Idempotently declare the level exchanges/queues and the delivery bindings (pika channel).
    `declare(channel, name, level)` replaces the plain queue_declare (the topology's type check)."""
    channel.exchange_declare(DELIVER_EXCHANGE, exchange_type="topic", durable=True)
    for level in range(LEVELS):
        exchange = level_exchange(level)
        below = level_exchange(level - 1) if level else DELIVER_EXCHANGE
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        if declare is None:
            channel.queue_declare(level_queue(level), durable=True, arguments=level_arguments(level, queue_type))
        else:
            declare(channel, level_queue(level), level)
        channel.queue_bind(level_queue(level), exchange, routing_key=_bit_pattern(level, "1"))
        channel.exchange_bind(destination=below, source=exchange, routing_key=_bit_pattern(level, "0"))
    for queue in target_queues:
        channel.queue_bind(queue, DELIVER_EXCHANGE, routing_key="*." * LEVELS + queue)


BROKER_COUNT = "x-delivery-count"  # set by quorum queues on every delivery: earlier deliveries


def strip_death_headers(headers: dict) -> dict:
    """Headers without what the broker added on the way: the x-death trail the levels left (one
    entry per level passed) and a quorum queue's delivery count, which belongs to the delivered
    message, not to a republished copy (a classic queue would pass a stale count on)."""
    return {k: v for k, v in headers.items()
            if not k.startswith(("x-death", "x-first-death", "x-last-death")) and k != BROKER_COUNT}
