"""The dashboard's own broker connection: queue depths and consumers by passive declare, whether
the beat lock is held, and who holds it (the leader's periodic announcements on the beat events
exchange). Read-only: it declares nothing but one exclusive, server-named queue for the events.
Owned by the collector thread alone (pika connections are not thread-safe)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from utilitarian.beat.lock import EVENTS_EXCHANGE, LOCK_QUEUE, RESOURCE_LOCKED, BeatEvent
from utilitarian.broker.connection import BrokerSettings, connect_blocking, translate
from utilitarian.broker.topology import QueueState, close_quietly, queue_states

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
NOT_FOUND = 404
# A leader announces itself every 5 s (beat/loop.py ANNOUNCE_INTERVAL); an announcement older than
# this no longer names the holder (a new leader may not have announced yet).
HOLDER_FRESH = 20.0


@dataclass(frozen=True)
class BeatView:
    held: bool                      # the lock queue exists: some beat leads
    holder: str | None              # host:pid of the leader, from its latest announcement
    since: dt.datetime | None       # when that leader took the lock
    heard: dt.datetime | None       # when we last heard that announcement
    events: bool                    # whether the events exchange exists (a beat ever ran here)


class BrokerView:
    def __init__(self, settings: BrokerSettings):
        self.settings = settings
        self.connection = None
        self.events_queue: str | None = None
        self.latest: tuple[BeatEvent, dt.datetime] | None = None

    def _open(self) -> None:
        if self.connection is not None and self.connection.is_open:
            return
        self.close()
        self.connection = connect_blocking(self.settings, name="utilitarian dashboard", attempts=1)
        self.events_queue = None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            close_quietly(connection)

    def queues(self, names) -> list[QueueState]:
        """Raises BrokerError (translated) when the broker cannot be asked; the next call reconnects."""
        try:
            self._open()
            return queue_states(self.connection, self.settings, names)
        except Exception as exc:
            self.close()
            raise translate(exc, self.settings) from None

    def beat(self, now: dt.datetime) -> BeatView:
        import pika.exceptions

        try:
            self._open()
            self._listen()
            self.connection.process_data_events(time_limit=0)
            channel = self.connection.channel()
            try:
                channel.queue_declare(LOCK_QUEUE, passive=True)
                held = True  # declared by a connection that is not exclusive to another: still a holder
                channel.close()
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code not in (NOT_FOUND, RESOURCE_LOCKED):
                    raise
                held = exc.reply_code == RESOURCE_LOCKED
        except Exception as exc:
            self.close()
            raise translate(exc, self.settings) from None
        return beat_view(held, self.latest, now, events=self.events_queue is not None)

    def _listen(self) -> None:
        """Bind a private queue to the beat events once the exchange exists (a beat declares it)."""
        import pika.exceptions

        if self.events_queue is not None:
            return
        channel = self.connection.channel()
        try:
            channel.exchange_declare(EVENTS_EXCHANGE, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                return
            raise
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, EVENTS_EXCHANGE)
        channel.basic_consume(queue, self.on_event, auto_ack=True)
        self.events_queue = queue

    def on_event(self, _channel, _method, _props, body) -> None:
        event = BeatEvent.decode(body)
        if event is not None:
            self.latest = (event, dt.datetime.now(UTC))


def beat_view(held: bool, latest: tuple[BeatEvent, dt.datetime] | None, now: dt.datetime, *,
              events: bool) -> BeatView:
    """Who leads, from the lock's existence and the latest announcement heard (pure)."""
    if not held or latest is None:
        return BeatView(held, None, None, latest[1] if latest else None, events)
    event, heard = latest
    fresh = event.kind == "leader" and (now - heard).total_seconds() <= HOLDER_FRESH
    return BeatView(held, event.holder if fresh else None, event.since if fresh else None, heard, events)
