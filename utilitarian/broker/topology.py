"""Idempotent declaration of the 14 task queues, the dead-letter queue and the delay levels.

Queues are plain durable classic queues without arguments, and each has a direct exchange of
its own name bound with its name: exactly what a Celery producer declares for `queue=<name>`,
so both sides can declare in any order without a 406 PRECONDITION_FAILED.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from utilitarian import queues
from utilitarian.broker import delay
from utilitarian.broker.connection import BrokerSettings, connect_blocking, translate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueState:
    name: str
    messages: int | None  # None: the queue does not exist
    consumers: int | None


def declare_queue(channel, name: str) -> None:
    channel.queue_declare(name, durable=True)
    channel.exchange_declare(name, exchange_type="direct", durable=True)
    channel.queue_bind(name, name, routing_key=name)


# Declared last, so its existence means everything before it exists. The name carries a version:
# a release that changes the topology bumps it and every process declares again.
MARKER = "utilitarian.topology.v1"


def declare_all(channel, task_queues=queues.QUEUES) -> None:
    """Declare everything workers, beat and producers rely on, on an open pika channel."""
    for name in task_queues:
        declare_queue(channel, name)
    declare_queue(channel, queues.DEAD_LETTER)
    delay.declare(channel, list(task_queues) + [queues.DEAD_LETTER])
    channel.exchange_declare(MARKER, exchange_type="fanout", durable=True)


def ensure_declared(connection, channel):
    """Declare the topology unless the marker says it is complete; returns a usable channel.
    One round trip instead of ~150 when a worker child starts or reconnects."""
    import pika.exceptions

    try:
        channel.exchange_declare(MARKER, exchange_type="fanout", durable=True, passive=True)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
    channel = connection.channel()  # the 404 closed the first one
    declare_all(channel)
    return channel


def declare_topology(settings: BrokerSettings, task_queues=queues.QUEUES, *, attempts: int | None = 3) -> None:
    connection = connect_blocking(settings, name="utilitarian topology", attempts=attempts)
    try:
        channel = connection.channel()
        try:
            declare_all(channel, task_queues)
        except Exception as exc:
            raise translate(exc, settings) from None
    finally:
        _close_quietly(connection)


def ensure_topology(settings: BrokerSettings, *, attempts: int | None = 3) -> None:
    """Declare the topology on a broker that lacks it (one round trip when it is there)."""
    connection = connect_blocking(settings, name="utilitarian topology", attempts=attempts)
    try:
        try:
            ensure_declared(connection, connection.channel())
        except Exception as exc:
            raise translate(exc, settings) from None
    finally:
        _close_quietly(connection)


def inspect_queues(settings: BrokerSettings, names, *, attempts: int | None = 3) -> list[QueueState]:
    """Depth and consumer count per queue by passive declare (no management plugin needed)."""
    import pika.exceptions

    connection = connect_blocking(settings, name="utilitarian inspect", attempts=attempts)
    out = []
    try:
        channel = connection.channel()
        for name in names:
            try:
                ok = channel.queue_declare(name, passive=True)
                out.append(QueueState(name, ok.method.message_count, ok.method.consumer_count))
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise translate(exc, settings) from None
                out.append(QueueState(name, None, None))
                channel = connection.channel()
    finally:
        _close_quietly(connection)
    return out


def _close_quietly(connection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # closing a broken connection raises; nothing left to do with it
        log.debug("error closing connection", exc_info=True)
