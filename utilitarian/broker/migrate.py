"""`topology migrate`: move a live installation to the other queue type (classic -> quorum) by
moving every message from the old vhost to the same topology, declared with the new type, in a new
vhost, while producers, workers and the beat are switched over one by one.

Why not in place: a queue's type cannot change, so it would have to be deleted and declared again,
and Celery producers publish through the default exchange: whatever they send while the queue is
missing is dropped, and even confirmed. Two vhosts never lack a queue. Each message is published to
the new vhost with confirms and only then acked in the old one (at least once; a crash in between
leaves a duplicate, never a loss). The move ends when the old vhost is drained: every queue empty
and no consumer left (so no unacked delivery can come back), for `until_idle` seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from utilitarian import queues
from utilitarian.beat.state import STATE_QUEUE
from utilitarian.broker import delay, redeliver
from utilitarian.broker.connection import BrokerSettings, connect_blocking, translate
from utilitarian.broker.publisher import ConfirmedPublisher, Outgoing
from utilitarian.broker.topology import declare_topology, inspect_queues

log = logging.getLogger(__name__)

LOCK_QUEUE = "utilitarian.beat.lock"  # the beat's (beat.lock imports the topology; kept apart)
BATCH = 500  # messages moved per confirm round trip
_PROPERTIES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
               "expiration", "timestamp", "type", "app_id")  # not user_id: the broker checks it is ours


def source_queues() -> list[str]:
    """Every queue of ours that can hold messages, task queues first."""
    return [*queues.QUEUES, queues.DEAD_LETTER, *(delay.level_queue(n) for n in range(delay.LEVELS)), STATE_QUEUE]


def destination(queue: str, routing_key: str) -> tuple[str, str]:
    """(exchange, routing key) in the new vhost for a message taken from `queue` of the old one.

    A message waiting in a delay level goes straight to its target queue: the worker sees its ETA
    and delays it again through the new vhost's levels for the time left (restarting a level's
    wait would add up to its whole TTL). One whose route we cannot read goes to the dead letters."""
    level = delay.level_of(queue)
    if level is None:
        return "", queue
    target = delay.target_of(routing_key)
    return ("", target) if target else ("", queues.DEAD_LETTER)


def copy_message(queue: str, method, properties, body: bytes) -> Outgoing:
    """The message as it will be published in the new vhost: same body and properties, without
    the headers the old broker added on the way."""
    exchange, key = destination(queue, method.routing_key)
    props = {name: getattr(properties, name, None) for name in _PROPERTIES}
    props = {k: v for k, v in props.items() if v is not None}
    props["headers"] = delay.strip_death_headers(dict(getattr(properties, "headers", None) or {}))
    if key == queues.DEAD_LETTER and queue != queues.DEAD_LETTER:
        return redeliver.dead_letter(queue, body, properties, reason="migrate_unroutable",
                                     error=f"routing key {method.routing_key!r} names no queue", attempts=0)
    return Outgoing(exchange, key, body, props)


@dataclass
class Progress:
    """What the move did so far; `drained_since` is when the old vhost was last seen drained."""

    moved: dict[str, int] = field(default_factory=dict)
    state_moved: int = 0
    state_dropped: int = 0  # old states made obsolete by a beat already leading in the new vhost
    state_held: bool = False  # a beat still leads in the old vhost: its state is not final yet
    drained_since: float | None = None
    last: dict[str, tuple[int, int]] = field(default_factory=dict)  # queue -> (messages, consumers)

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def is_drained(depths: dict[str, tuple[int, int]], beat_leads: bool = False) -> bool:
    """No message waits, nobody consumes (no unacked delivery can return) and no beat leads (it
    would fire again) in the old vhost."""
    return not beat_leads and all(messages == 0 and consumers == 0 for messages, consumers in depths.values())


class Migration:
    """Moves messages from `source` (the old vhost) to `target` (the config's vhost and type)."""

    def __init__(self, target: BrokerSettings, source_vhost: str, *, clock: Callable[[], float] = time.monotonic):
        if source_vhost == target.vhost:
            from utilitarian.errors import UsageError

            raise UsageError(f"--from-vhost {source_vhost!r} is the configured vhost: a queue's type cannot change "
                             "in place; point [broker] url at a new vhost (docs/operations.md, \"A RabbitMQ cluster\")")
        self.target = target
        self.source = dataclasses.replace(target, vhost=source_vhost)
        self.clock = clock
        self.progress = Progress()
        self.stop_requested = False
        self.connection = None
        self.channel = None
        self.publisher: ConfirmedPublisher | None = None

    # --- the loop ------------------------------------------------------------------------------
    def run(self, *, until_idle: float | None, report: Callable[[str], None] = print,
            report_every: float = 5.0) -> bool:
        """Move until drained for `until_idle` seconds (None: until `request_stop`), then one
        last sweep. Returns whether the old vhost was drained at the end."""
        declare_topology(self.target)
        declare_state_queue(self.target)
        self.publisher = ConfirmedPublisher(self.target, name="utilitarian migrate")
        next_report = self.clock() + report_every
        try:
            self.open()
            while True:
                moved = self.sweep()
                now = self.clock()
                drained = not moved and is_drained(self.progress.last, self.progress.state_held)
                if not drained:
                    self.progress.drained_since = None
                elif self.progress.drained_since is None:
                    self.progress.drained_since = now
                if now >= next_report:
                    report(self.describe())
                    next_report = now + report_every
                if self.stop_requested:
                    break
                if until_idle is not None and drained and now - self.progress.drained_since >= until_idle:
                    break
                if not moved:
                    time.sleep(0.2)
            self.sweep()  # whatever arrived meanwhile
            return is_drained(self.progress.last, self.progress.state_held)
        finally:
            self.close()

    def request_stop(self) -> None:
        """Safe from a signal handler: records only."""
        self.stop_requested = True

    def open(self) -> None:
        self.connection = connect_blocking(self.source, name="utilitarian migrate (old vhost)", attempts=3)
        self.channel = self.connection.channel()

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # a broken connection: its unacked messages stay in the old vhost
                log.debug("closing the old vhost's connection failed", exc_info=True)

    # --- one pass over the old vhost ----------------------------------------------------------
    def sweep(self) -> int:
        """Move what waits now in every queue of the old vhost; returns how many were moved."""
        moved = 0
        depths: dict[str, tuple[int, int]] = {}
        for queue in source_queues():
            state = self.passive(queue)
            if state is None:
                continue
            depths[queue] = state
            if queue == STATE_QUEUE:
                moved += self.move_state()
            elif state[0]:
                moved += self.move_queue(queue, state[0])
        self.progress.last = {q: self.passive(q) or (0, 0) for q in depths} if moved else depths
        return moved

    def passive(self, queue: str) -> tuple[int, int] | None:
        import pika.exceptions

        try:
            ok = self.channel.queue_declare(queue, passive=True)
            return ok.method.message_count, ok.method.consumer_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.channel = self.connection.channel()
            if exc.reply_code == 404:
                return None
            raise translate(exc, self.source) from None

    def move_queue(self, queue: str, limit: int) -> int:
        """Take up to `limit` messages (in batches), publish them with confirms, then ack them."""
        moved = 0
        while moved < limit and not self.stop_requested:
            batch, last_tag = [], None
            while len(batch) < min(BATCH, limit - moved):
                method, properties, body = self.channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                batch.append(copy_message(queue, method, properties, body))
                last_tag = method.delivery_tag
            if not batch:
                break
            try:
                self.publisher.publish_many(batch)
            except Exception:
                # Nothing is acked: the batch stays in the old vhost (the confirmed part of it will
                # be moved again: a duplicate, never a loss).
                self.channel.basic_nack(last_tag, multiple=True, requeue=True)
                raise
            self.channel.basic_ack(last_tag, multiple=True)
            moved += len(batch)
            self.progress.moved[queue] = self.progress.moved.get(queue, 0) + len(batch)
        return moved

    def move_state(self) -> int:
        """The beat's state, only once final: while a beat leads in the old vhost it still changes
        (a new leader catching up from a stale copy would fire slots twice). If a beat leads in
        the new vhost already, it started from its own state and the old one is obsolete."""
        self.progress.state_held = self.lock_held(self.connection, self.source)
        if self.progress.state_held:
            return 0
        target = connect_blocking(self.target, name="utilitarian migrate (beat lock)", attempts=3)
        try:
            new_leader = self.lock_held(target, self.target)
        finally:
            target.close()
        method, properties, body = self.channel.basic_get(STATE_QUEUE, auto_ack=False)
        if method is None:
            return 0
        if new_leader:
            log.warning("a beat leads in vhost %r already; the old vhost's beat state is obsolete and dropped",
                        self.target.vhost)
            self.progress.state_dropped += 1
        else:
            self.publisher.publish(Outgoing("", STATE_QUEUE, body, {
                "content_type": properties.content_type, "content_encoding": properties.content_encoding,
                "delivery_mode": 2}))
            self.progress.state_moved += 1
        self.channel.basic_ack(method.delivery_tag)
        return 1

    @staticmethod
    def lock_held(connection, settings: BrokerSettings) -> bool:
        import pika.exceptions

        channel = connection.channel()
        try:
            channel.queue_declare(LOCK_QUEUE, passive=True)
            channel.close()
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            if exc.reply_code == 405:  # RESOURCE_LOCKED: exclusive to a leading beat's connection
                return True
            raise translate(exc, settings) from None

    def describe(self) -> str:
        waiting = {q: m for q, (m, _c) in self.progress.last.items() if m}
        consumers = {q: c for q, (_m, c) in self.progress.last.items() if c}
        text = f"moved {self.progress.total} message(s) from vhost {self.source.vhost!r} to {self.target.vhost!r}"
        if waiting:
            text += "; waiting in the old vhost: " + ", ".join(
                f"{queues.short_name(q)} {m}" for q, m in waiting.items())
        if consumers:
            text += "; still consumed there: " + ", ".join(
                f"{queues.short_name(q)} ({c})" for q, c in consumers.items())
        if self.progress.state_held:
            text += "; a beat still leads in the old vhost (its state moves once it stops)"
        elif self.progress.state_moved:
            text += "; beat state moved (start the beats on the new vhost now)"
        if not waiting and not consumers:
            text += "; the old vhost is drained"
        return text


def check(target: BrokerSettings, source_vhost: str) -> tuple[bool, list[str]]:
    """`migrate --check`: are the new vhost's queues of the wanted type, is the old one drained?"""
    states = inspect_queues(target, [*queues.QUEUES, queues.DEAD_LETTER], types=True)
    wrong = [f"{queues.short_name(s.name)} ({s.type or 'missing'})" for s in states if s.type != target.queue_type]
    lines = [f"vhost {target.vhost!r}: " + (f"not {target.queue_type}: " + ", ".join(wrong) if wrong
                                            else f"every task queue is {target.queue_type}")]
    migration = Migration(target, source_vhost)
    migration.open()
    try:
        migration.progress.last = {q: s for q in source_queues() if (s := migration.passive(q)) is not None}
        migration.progress.state_held = Migration.lock_held(migration.connection, migration.source)
    finally:
        migration.close()
    lines.append(migration.describe())
    return not wrong and is_drained(migration.progress.last, migration.progress.state_held), lines


def declare_state_queue(settings: BrokerSettings) -> None:
    """The beat's state queue in the new vhost (the beat declares it too; the state may come first)."""
    from utilitarian.beat.state import declare_state_queue as declare

    connection = connect_blocking(settings, name="utilitarian migrate (state queue)", attempts=3)
    try:
        declare(connection.channel(), settings.queue_type)
    except Exception as exc:
        raise translate(exc, settings) from None
    finally:
        if connection.is_open:
            connection.close()
