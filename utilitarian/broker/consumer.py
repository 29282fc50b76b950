"""The consuming side of a worker child: one thread (the pump) owns a pika BlockingConnection;
task threads settle their deliveries through `settle()`, which hands the ack to the pump with
`add_callback_threadsafe`, on the channel that delivered, and only if that channel still lives."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from utilitarian.broker.connection import Backoff, BrokerSettings, connect_blocking, translate
from utilitarian.errors import BrokerUnavailable

log = logging.getLogger(__name__)

ACK, REQUEUE, DROP = "ack", "requeue", "drop"


@dataclass(eq=False)
class Delivery:
    """One message as delivered; `generation` ties it to the channel that may settle it."""

    queue: str
    delivery_tag: int
    redelivered: bool
    body: bytes
    properties: object  # pika.BasicProperties
    generation: int
    received: float = field(default_factory=time.monotonic)
    exchange: str = ""
    routing_key: str = ""

    @property
    def headers(self) -> dict:
        return dict(getattr(self.properties, "headers", None) or {})


class Consumer:
    """Consume several queues on one channel with a shared prefetch (= free task slots).

    `run(tick)` pumps until `stop()`; `tick()` is called at least every `tick_interval` on the
    pump thread (heartbeats to the master, time limits). Connection losses are retried with a
    capped backoff that resets once consuming resumed; settles for deliveries of a dead channel
    are dropped, since the broker redelivers those messages anyway.
    """

    def __init__(self, settings: BrokerSettings, queues: list[str], prefetch: int,
                 on_delivery: Callable[[Delivery], None], *, name: str = "utilitarian worker",
                 tick_interval: float = 0.2):
        self.settings = settings
        self.queues = list(queues)
        self.prefetch = prefetch
        self.on_delivery = on_delivery
        self.name = name
        self.tick_interval = tick_interval
        self.connection = None
        self.channel = None
        self.generation = 0
        self.consuming = False
        self.stop_requested: str | None = None  # None | "drain" | "now"
        self._consumer_tags: dict[str, str] = {}
        self._pending: collections.deque = collections.deque()
        self._wake_scheduled = False
        self._lock = threading.Lock()
        self._outstanding: set[int] = set()  # delivery tags of the live channel not settled yet
        self.on_consuming: Callable[[], None] | None = None
        # (connection, channel) -> channel to consume on; e.g. declare the topology first
        self.prepare: Callable[[object, object], object] | None = None
        self.on_connection_lost: Callable[[Exception], None] | None = None

    # --- thread-safe API ---------------------------------------------------------------------
    def settle(self, delivery: Delivery, how: str = ACK) -> None:
        """Ack (or requeue) from any thread; batched so one wake-up carries many acks."""
        with self._lock:
            self._pending.append((delivery, how))
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
            connection = self.connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(self._flush_settles)
        except Exception:  # connection already closed: the broker redelivers these
            with self._lock:
                self._wake_scheduled = False

    # --- pump thread -------------------------------------------------------------------------
    def _flush_settles(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._wake_scheduled = False
        channel = self.channel
        acks = []
        for delivery, how in batch:
            if delivery.generation != self.generation or channel is None or not channel.is_open:
                log.debug("dropping %s of delivery %d from a closed channel; the broker redelivers it",
                          how, delivery.delivery_tag)
                continue
            self._outstanding.discard(delivery.delivery_tag)
            if how == ACK:
                acks.append(delivery.delivery_tag)
            elif how == REQUEUE:
                channel.basic_nack(delivery.delivery_tag, requeue=True)
            else:
                channel.basic_reject(delivery.delivery_tag, requeue=False)
        if not acks:
            return
        # One frame for many acks: `multiple` covers every tag up to the one given, so it may
        # only reach below the oldest delivery still being worked on.
        oldest = min(self._outstanding) if self._outstanding else None
        below = [tag for tag in acks if oldest is None or tag < oldest]
        if below:
            channel.basic_ack(max(below), multiple=True)
        for tag in acks:
            if oldest is not None and tag > oldest:
                channel.basic_ack(tag)

    def _on_message(self, channel, method, properties, body) -> None:
        queue = self._consumer_tags.get(method.consumer_tag, method.routing_key)
        self._outstanding.add(method.delivery_tag)
        self.on_delivery(Delivery(queue, method.delivery_tag, method.redelivered, body, properties,
                                  self.generation, exchange=method.exchange, routing_key=method.routing_key))

    def _open(self) -> None:
        self.connection = connect_blocking(self.settings, name=self.name, attempts=1)
        self.generation += 1
        self._outstanding = set()
        try:
            channel = self.connection.channel()
            if self.prepare is not None:
                channel = self.prepare(self.connection, channel) or channel
            # One limit for the whole channel (global_qos): a child never holds more messages
            # than it has threads, whichever queues they came from. Quorum queues refuse global
            # QoS (540 NOT_IMPLEMENTED at basic.consume), so there each consumer gets the limit:
            # a child of k queues may hold k x threads (docs/operations.md, "A RabbitMQ cluster").
            quorum = getattr(self.settings, "queue_type", "classic") == "quorum"
            channel.basic_qos(prefetch_count=self.prefetch, global_qos=not quorum)
            self._consumer_tags = {}
            for queue in self.queues:
                tag = channel.basic_consume(queue, self._on_message)
                self._consumer_tags[tag] = queue
        except Exception as exc:
            self._close_quietly()
            raise translate(exc, self.settings) from None
        self.channel = channel
        self.consuming = True
        with self._lock:  # settles queued while disconnected belong to the old channel
            self._pending = collections.deque(item for item in self._pending if item[0].generation == self.generation)
            self._wake_scheduled = False

    def cancel(self) -> None:
        """Stop receiving new deliveries (pump thread); in-flight ones can still be acked."""
        if self.channel is not None and self.channel.is_open and self.consuming:
            for tag in list(self._consumer_tags):
                try:
                    self.channel.basic_cancel(tag)
                except Exception as exc:  # a dying channel: nothing more will be delivered anyway
                    log.debug("basic_cancel failed: %s", exc)
        self.consuming = False

    def stop(self, how: str = "drain") -> None:
        """Ask the pump to stop: "drain" finishes in-flight work first, "now" closes at once."""
        if self.stop_requested != "now":
            self.stop_requested = how

    def run(self, tick: Callable[[], None], in_flight: Callable[[], int], drain_deadline: Callable[[], float]) -> None:
        """Pump until stopped. `in_flight()` counts deliveries still being worked on;
        `drain_deadline()` is the monotonic time after which a drain gives up."""
        import pika.exceptions as pe

        backoff = Backoff(cap=self.settings.retry_backoff_max)
        while True:
            if self.stop_requested == "now":
                break
            if self.connection is None or not self.connection.is_open:
                if self.stop_requested:
                    break
                try:
                    self._open()
                except BrokerUnavailable as exc:
                    delay = backoff.next_delay()
                    log.warning("%s; reconnecting in %.1fs", exc, delay)
                    self._sleep_ticking(delay, tick)
                    continue
                log.info("consuming %s with prefetch %d", ", ".join(self.queues), self.prefetch)
                backoff.reset()
                if self.on_consuming:
                    self.on_consuming()
            try:
                self.connection.process_data_events(time_limit=self.tick_interval)
                if self._pending:
                    self._flush_settles()
                tick()
                if self.stop_requested == "drain":
                    self.cancel()
                    if in_flight() == 0 and not self._pending:
                        break
                    if time.monotonic() >= drain_deadline():
                        log.warning("drain deadline passed with %d task(s) in flight; their messages "
                                    "will be redelivered", in_flight())
                        break
            except (pe.AMQPConnectionError, pe.AMQPChannelError, pe.StreamLostError, pe.ConnectionWrongStateError,
                    OSError) as exc:
                err = translate(exc, self.settings)
                self.consuming = False
                self.channel = None
                self._close_quietly()
                if self.on_connection_lost:
                    self.on_connection_lost(err)
                if self.stop_requested:
                    log.warning("connection lost while stopping (%s); unacked messages will be redelivered", err)
                    break
                log.warning("connection lost (%s); tasks in flight finish but their messages will be "
                            "redelivered", err)
        self._close_quietly()

    def _sleep_ticking(self, seconds: float, tick: Callable[[], None]) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(self.tick_interval, max(0.0, deadline - time.monotonic())))
            tick()

    def _close_quietly(self) -> None:
        connection, self.connection = self.connection, None
        self.channel = None
        self.consuming = False
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
        except Exception as exc:  # already broken; the broker will notice
            log.debug("closing connection: %s", exc)
