"""The beat's one broker connection: leadership by the exclusive queue `utilitarian.beat.lock`,
the fanout `utilitarian.beat.events` that tells standbys a leader let go, and the transactional
channel that publishes fires and state together. A beat that loses this connection loses the lock
and the only channel it fires on at once: fencing needs nothing more."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Sequence

from utilitarian.beat.state import STATE_QUEUE, BeatState, declare_state_queue, read_state, state_properties
from utilitarian.broker.connection import BrokerSettings, connect_blocking, translate
from utilitarian.broker.publisher import Outgoing
from utilitarian.broker.topology import declare_all
from utilitarian.errors import BrokerUnavailable
from utilitarian.fleet.protocol import CONTROL_EXCHANGE, Request, declare_control

log = logging.getLogger(__name__)

LOCK_QUEUE = "utilitarian.beat.lock"
EVENTS_EXCHANGE = "utilitarian.beat.events"
RESOURCE_LOCKED = 405
UTC = dt.timezone.utc


class LockLost(BrokerUnavailable):
    """The lock, its channel or its connection is gone: stop firing, reconnect, re-contend."""


@dataclass(frozen=True)
class BeatEvent:
    """A note from one beat to the others: "leader" (announced periodically) or "released"."""

    kind: str
    holder: str
    since: dt.datetime | None = None

    def encode(self) -> bytes:
        return json.dumps({"event": self.kind, "holder": self.holder,
                           "since": self.since.isoformat() if self.since else None}).encode("utf-8")

    @classmethod
    def decode(cls, body: bytes) -> "BeatEvent | None":
        try:
            doc = json.loads(body.decode("utf-8"))
            since = dt.datetime.fromisoformat(doc["since"]) if doc.get("since") else None
            return cls(str(doc["event"]), str(doc["holder"]), since)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring an unreadable message on %s", EVENTS_EXCHANGE)
            return None


class BeatConnection:
    """One pika BlockingConnection, owned by the beat loop's thread.

    Channels: `control` (topology, the events consumer, announcements) and, while leading, the
    lock channel that declared the exclusive queue and is in transaction mode.
    """

    def __init__(self, settings: BrokerSettings, *, identity: str, heartbeat: float):
        self.settings = settings
        self.identity = identity
        self.heartbeat = heartbeat
        self.connection = None
        self.control = None
        self.lock_channel = None
        self.events: list[BeatEvent] = []
        self.requests: list[tuple[Request, str]] = []  # fleet control requests and their reply queues
        self.returned: list[str] = []

    # --- connection ------------------------------------------------------------------------
    def open(self) -> None:
        """Connect (one attempt; the caller owns the backoff) and declare what the beat uses."""
        self.connection = connect_blocking(self.settings, name=f"utilitarian beat {self.identity}",
                                           heartbeat=self.heartbeat, attempts=1)
        try:
            channel = self.connection.channel()
            declare_all(channel, queue_type=self.settings.queue_type)
            declare_state_queue(channel, self.settings.queue_type)
            channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="fanout", durable=True)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, EVENTS_EXCHANGE)
            channel.basic_consume(queue, self.on_event, auto_ack=True)
            # Fleet control (`status --all`): requests wait here until the loop answers them.
            declare_control(channel)
            control_queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(control_queue, CONTROL_EXCHANGE)
            channel.basic_consume(control_queue, self.on_control, auto_ack=True)
        except Exception as exc:  # pika raises many types; translate decides fatal or retry
            self.close()
            raise translate(exc, self.settings) from None
        self.control = channel

    @property
    def is_open(self) -> bool:
        return self.connection is not None and self.connection.is_open

    def close(self) -> None:
        connection, self.connection = self.connection, None
        self.control = self.lock_channel = None
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
        except Exception:  # closing a broken connection raises; the socket is gone either way
            log.debug("error closing the beat connection", exc_info=True)

    # --- leadership --------------------------------------------------------------------------
    def acquire(self) -> BeatState | None:
        """Try to take the lock: the state to continue from when we lead, None when another
        beat holds it (405 RESOURCE_LOCKED)."""
        import pika.exceptions

        try:
            channel = self.connection.channel()
            channel.queue_declare(LOCK_QUEUE, durable=False, exclusive=True, auto_delete=False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == RESOURCE_LOCKED:
                return None
            raise LockLost(f"cannot declare {LOCK_QUEUE}: {exc.reply_code} {exc.reply_text}") from None
        except Exception as exc:  # connection trouble while contending: reconnect
            raise LockLost(str(translate(exc, self.settings))) from None
        try:
            # Read before tx_select: in transaction mode the requeue would wait for a commit.
            state = read_state(channel)
            channel.tx_select()
            channel.add_on_return_callback(self.on_return)
        except Exception as exc:
            raise LockLost(f"lock taken but the state could not be read: {translate(exc, self.settings)}") from None
        self.lock_channel = channel
        return state

    def verify(self) -> None:
        """Cheap proof the lock is still ours before a commit (an operator may have deleted the
        queue, which would let another beat declare it)."""
        try:
            self.lock_channel.queue_declare(LOCK_QUEUE, passive=True)
        except Exception as exc:
            raise LockLost(f"lock check failed: {translate(exc, self.settings)}") from None

    def commit(self, fires: Sequence[Outgoing], state_body: bytes) -> None:
        """Publish the fires and the new state in one transaction on the lock channel: a leader
        killed before tx.commit published nothing, after it everything."""
        import pika

        channel = self.lock_channel
        if channel is None:
            raise LockLost("not leading")
        try:
            for out in fires:
                channel.basic_publish(out.exchange, out.routing_key, out.body,
                                      pika.BasicProperties(**out.properties), mandatory=out.mandatory)
            channel.basic_publish("", STATE_QUEUE, state_body, pika.BasicProperties(**state_properties()))
            channel.tx_commit()
        except Exception as exc:
            raise LockLost(f"commit failed, nothing or everything of it was published: "
                           f"{translate(exc, self.settings)}") from None

    def release(self, since: dt.datetime | None) -> None:
        """Give the lock up on purpose (TERM): delete it, then tell the standbys at once."""
        if self.lock_channel is not None:
            self.lock_channel.queue_delete(LOCK_QUEUE)
            self.lock_channel = None
        self.publish_event(BeatEvent("released", self.identity, since))

    def publish_event(self, event: BeatEvent) -> None:
        import pika

        try:
            self.control.basic_publish(EVENTS_EXCHANGE, "", event.encode(),
                                       pika.BasicProperties(content_type="application/json"))
        except Exception as exc:
            raise LockLost(f"cannot publish a beat event: {translate(exc, self.settings)}") from None

    # --- waiting -------------------------------------------------------------------------------
    def pump(self, seconds: float) -> list[BeatEvent]:
        """Service the connection (heartbeats, events) for up to `seconds`; returns the events of
        other beats received meanwhile. Returns early when an event arrives."""
        try:
            self.connection.process_data_events(time_limit=max(0.0, seconds))
        except Exception as exc:
            raise LockLost(str(translate(exc, self.settings))) from None
        events, self.events = self.events, []
        if self.returned:
            returned, self.returned = self.returned, []
            for text in returned:
                log.error("%s", text)
        return events

    # --- pika callbacks ------------------------------------------------------------------------
    def on_event(self, _channel, _method, _props, body) -> None:
        event = BeatEvent.decode(body)
        if event is not None and event.holder != self.identity:
            self.events.append(event)

    def on_control(self, _channel, _method, props, body) -> None:
        request = Request.decode(body)
        if request is not None and props.reply_to:
            self.requests.append((request, props.reply_to))

    def send(self, exchange: str, routing_key: str, body: bytes, correlation_id: str | None = None) -> None:
        """A fleet reply or roster announcement on the control channel (no confirm: best effort)."""
        import pika

        try:
            self.control.basic_publish(exchange, routing_key, body, pika.BasicProperties(
                content_type="application/json", correlation_id=correlation_id))
        except Exception as exc:
            raise LockLost(f"cannot publish on the control channel: {translate(exc, self.settings)}") from None

    def on_return(self, _channel, method, props, _body) -> None:
        headers = props.headers or {}
        self.returned.append(
            f"fire {headers.get('id')} of {headers.get('utilitarian_schedule')} was returned "
            f"({method.reply_code} {method.reply_text}, routing key {method.routing_key}): it is lost; "
            "run `utilitarian topology declare`")
