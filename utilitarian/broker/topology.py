"""Idempotent declaration of the 14 task queues, the dead-letter queue and the delay levels, as
classic queues (Celery's default) or quorum queues (replicated over a RabbitMQ cluster).

Task queues carry no arguments (classic) or only `x-queue-type: quorum`, and each has a direct
exchange of its own name bound with its name: exactly what a Celery producer declares for
`queue=<name>` (with the queue arguments README gives for quorum), so both sides can declare in any
order without a 406 PRECONDITION_FAILED. A queue's type cannot change in place: one found with the
other type is a `QueueTypeMismatch` naming the queue and the way out.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

from utilitarian import queues
from utilitarian.broker import delay
from utilitarian.broker.connection import BrokerSettings, connect_blocking, translate
from utilitarian.errors import TopologyError
from utilitarian.fleet.protocol import CONTROL_EXCHANGE

log = logging.getLogger(__name__)

QUEUE_TYPES = ("classic", "quorum")


class QueueTypeMismatch(TopologyError):
    """A queue exists with the other type than `[broker] queue_type` asks for (exit 78)."""

    def __init__(self, queue: str, found: str, wanted: str):
        self.queue, self.found, self.wanted = queue, found, wanted
        if wanted == "quorum":
            way_out = ("a queue's type cannot change in place: move this vhost's messages to quorum queues in "
                       "a new vhost with `utilitarian topology migrate --to quorum --from-vhost OLD` "
                       "(docs/operations.md, \"A RabbitMQ cluster\"), or keep [broker] queue_type = \"classic\"")
        else:
            way_out = f"set [broker] queue_type = \"{found}\" (the broker's queues are {found})"
        super().__init__(f"queue {queue!r} exists as a {found} queue but [broker] queue_type = \"{wanted}\"; {way_out}")


@dataclass(frozen=True)
class QueueState:
    name: str
    messages: int | None  # None: the queue does not exist
    consumers: int | None
    type: str | None = None  # "classic", "quorum", another type, "unknown", or None when missing


def task_queue_arguments(queue_type: str) -> dict:
    """Arguments of a task queue and of the dead-letter queue: Celery declares the same."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def declare_queue(channel, name: str, queue_type: str = "classic") -> None:
    declare_checked(channel, name, queue_type, task_queue_arguments)
    channel.exchange_declare(name, exchange_type="direct", durable=True)
    channel.queue_bind(name, name, routing_key=name)


def declare_checked(channel, name: str, queue_type: str, arguments_for: Callable[[str], dict]) -> None:
    """queue_declare with `arguments_for(queue_type)`; a 406 because the queue exists with the
    other type becomes QueueTypeMismatch (any other 406 is raised as it is)."""
    import pika.exceptions

    try:
        channel.queue_declare(name, durable=True, arguments=arguments_for(queue_type) or None)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        candidates = {t: arguments_for(t) for t in sorted(QUEUE_TYPES, key=lambda t: t != queue_type)}
        found = probe_queue_type(channel.connection, name, candidates)
        if found in QUEUE_TYPES and found != queue_type:
            raise QueueTypeMismatch(name, found, queue_type) from None
        raise


# Declared last, so its existence means everything before it exists. The name carries a version
# (a release that changes the topology bumps it and every process declares again) and the type.
MARKER = "utilitarian.topology.v1"


def marker_for(queue_type: str) -> str:
    return MARKER if queue_type == "classic" else f"{MARKER}.{queue_type}"


def declare_all(channel, task_queues=queues.QUEUES, queue_type: str = "classic") -> None:
    """Declare everything workers, beat and producers rely on, on an open pika channel."""
    for name in task_queues:
        declare_queue(channel, name, queue_type)
    declare_queue(channel, queues.DEAD_LETTER, queue_type)
    delay.declare(channel, list(task_queues) + [queues.DEAD_LETTER], queue_type,
                  declare=lambda ch, name, level: declare_checked(
                      ch, name, queue_type, lambda t: delay.level_arguments(level, t)))
    # Fleet control (utilitarian/fleet): workers' agents, beats and clients declare it too, and the
    # roster stream next to it, so a broker whose marker predates it still gets it.
    channel.exchange_declare(CONTROL_EXCHANGE, exchange_type="fanout", durable=True)
    channel.exchange_declare(marker_for(queue_type), exchange_type="fanout", durable=True)


def ensure_declared(connection, channel, queue_type: str = "classic"):
    """Declare the topology unless the marker says it is complete; returns a usable channel.
    One round trip instead of ~150 when a worker child starts or reconnects."""
    import pika.exceptions

    try:
        channel.exchange_declare(marker_for(queue_type), exchange_type="fanout", durable=True, passive=True)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
    channel = connection.channel()  # the 404 closed the first one
    declare_all(channel, queue_type=queue_type)
    return channel


def declare_topology(settings: BrokerSettings, task_queues=queues.QUEUES, *, attempts: int | None = 3) -> None:
    connection = connect_blocking(settings, name="utilitarian topology", attempts=attempts)
    try:
        channel = connection.channel()
        try:
            declare_all(channel, task_queues, settings.queue_type)
        except Exception as exc:  # ours (QueueTypeMismatch) pass through translate unchanged
            raise translate(exc, settings) from None
    finally:
        close_quietly(connection)


def ensure_topology(settings: BrokerSettings, *, attempts: int | None = 3) -> None:
    """Declare the topology on a broker that lacks it (one round trip when it is there)."""
    connection = connect_blocking(settings, name="utilitarian topology", attempts=attempts)
    try:
        try:
            ensure_declared(connection, connection.channel(), settings.queue_type)
        except Exception as exc:
            raise translate(exc, settings) from None
    finally:
        close_quietly(connection)


def expected_arguments(name: str) -> dict[str, dict]:
    """What we declare `name` with, per queue type (for probing an existing queue's type)."""
    level = delay.level_of(name)
    if level is not None:
        return {t: delay.level_arguments(level, t) for t in QUEUE_TYPES}
    return {t: task_queue_arguments(t) for t in QUEUE_TYPES}


_TYPE_ARG = re.compile(r"inequivalent arg 'x-queue-type' .*but current is (?:the value )?(none|'([^']*)')")


def probe_queue_type(connection, name: str, candidates: dict[str, dict] | None = None) -> str | None:
    """The type of an existing queue without the management plugin: None when it does not exist,
    else the first candidate type whose arguments (default: ours for `name`) a declare accepts, or
    the type a 406 about `x-queue-type` reports ("current is ..."), or "unknown" (other arguments).

    The probe declares are not passive; the queue was there a moment before, so at worst (deleted
    in between) it is created as the first candidate, which is what `topology declare` does."""
    import pika.exceptions

    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    for queue_type, arguments in (candidates or expected_arguments(name)).items():
        if not channel.is_open:
            channel = connection.channel()
        try:
            channel.queue_declare(name, durable=True, arguments=arguments or None)
            channel.close()
            return queue_type
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            found = _TYPE_ARG.search(exc.reply_text or "")
            if found:
                return found.group(2) or "classic"  # `none` is the classic default
    return "unknown"


def inspect_queues(settings: BrokerSettings, names, *, attempts: int | None = 3,
                   types: bool = False) -> list[QueueState]:
    """Depth and consumer count per queue by passive declare (no management plugin needed); with
    `types`, each queue's type too (probed, see probe_queue_type)."""
    connection = connect_blocking(settings, name="utilitarian inspect", attempts=attempts)
    try:
        return queue_states(connection, settings, names, types=types)
    finally:
        close_quietly(connection)


def queue_states(connection, settings: BrokerSettings, names, *, types: bool = False) -> list[QueueState]:
    """`inspect_queues` on a connection the caller keeps (the dashboard samples every few seconds)."""
    import pika.exceptions

    out = []
    channel = connection.channel()
    try:
        for name in names:
            try:
                ok = channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise translate(exc, settings) from None
                out.append(QueueState(name, None, None))
                channel = connection.channel()
                continue
            kind = None
            if types:
                try:
                    kind = probe_queue_type(connection, name) or "missing"
                except Exception as exc:
                    raise translate(exc, settings) from None
            out.append(QueueState(name, ok.method.message_count, ok.method.consumer_count, kind))
    finally:
        if channel.is_open:
            channel.close()
    return out


def close_quietly(connection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # closing a broken connection raises; nothing left to do with it
        log.debug("error closing connection", exc_info=True)
