"""The consuming side of a worker child: one thread (the pump) owns a pika BlockingConnection;
task threads settle their deliveries through `settle()`, which hands the ack to the pump with
`add_callback_threadsafe`, on the channel that delivered, and only if that channel still lives.
What to do after a refusal, a loss or a broker-side cancel is decided by `recovery.ConnectionRules`
and which frames settle a batch by `acks.plan_flush`; this module only makes the pika calls.
Deliveries of our live consumers are parsed straight from pika's read buffer (deliver_frames.py)
and handed over inside pika's read callback, where no pika call may be made: a cancel asked for
there is sent by the run loop, or by the next delivery pika dispatches itself."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from utilitarian.broker import pika_floats, send_now, table_decode
from utilitarian.broker.acks import ACK, DROP, REQUEUE, plan_flush
from utilitarian.broker.deliver_frames import DeliverFrames
from utilitarian.broker.connection import BrokerSettings, connect_blocking, translate
from utilitarian.broker.recovery import ConnectionRules, Exit

log = logging.getLogger(__name__)
pika_floats.install()  # header doubles (Celery's `timelimit`) must not arrive truncated to integers
table_decode.install()  # pika's decoding of header tables, 2-3x faster (it was a quarter of a no-op task's CPU)

__all__ = ["ACK", "DROP", "REQUEUE", "Consumer", "Delivery"]


@dataclass(eq=False)
class Delivery:
    """One message as delivered; `generation` ties it to the channel that may settle it."""

    queue: str
    delivery_tag: int
    redelivered: bool
    body: bytes
    properties: object  # pika.BasicProperties
    generation: int
    received: float = 0.0  # monotonic time it arrived, where the caller cares (the pump does not stamp it)
    exchange: str = ""
    routing_key: str = ""

    @property
    def headers(self) -> dict:
        return dict(getattr(self.properties, "headers", None) or {})


class Consumer:
    """Consume several queues on one channel with a shared prefetch (= free task slots).

    `run(tick)` pumps until `stop()`; `tick()` is called at least every `tick_interval` on the
    pump thread (heartbeats to the master, stop requests). Refusals, losses and cancels are
    retried with a capped backoff (`rules`); settles for deliveries of a dead channel are
    dropped, since the broker redelivers those messages anyway. `run` raises only for a refusal
    the rules call a boot failure (the child exits 78).
    """

    def __init__(self, settings: BrokerSettings, queues: list[str], prefetch: int,
                 on_delivery: Callable[[Delivery], None], *, name: str = "utilitarian worker",
                 tick_interval: float = 0.2, rules: ConnectionRules | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.queues = list(queues)
        self.prefetch = prefetch
        self.on_delivery = on_delivery
        self.name = name
        self.tick_interval = tick_interval
        self.clock = clock
        self.rules = rules or ConnectionRules(backoff_cap=settings.retry_backoff_max)
        self.connection = None
        self.channel = None
        self.generation = 0
        self.stop_requested: str | None = None  # None | "drain" | "now"
        self._consumer_tags: dict[str, str] = {}  # live consumer tag -> queue
        # Every consumer tag of the live channel -> its queue, kept after a cancel: pika still
        # dispatches deliveries of a cancelled consumer that it held, and their queue is where
        # retries, counted copies and dead letters go back to. (The routing key is not: a message
        # that came through the delay levels carries the levels' key, which names no queue.)
        self._queue_of: dict[str, str] = {}
        self._resume_at: dict[str, float] = {}  # queues cancelled by the broker -> when to consume again
        self._reconnect_at = 0.0
        self._pending: collections.deque = collections.deque()
        self._wake_scheduled = False
        self._lock = threading.Lock()
        self._outstanding: set[int] = set()  # delivery tags of the live channel not settled yet
        self._cancelled_by_us = False
        self._in_read = False  # inside pika's read callback (fast deliveries): no pika calls now
        self._cancel_soon = False  # cancel() asked for inside the read callback; the run loop does it
        self.on_consuming: Callable[[], None] | None = None
        # (connection, channel) -> channel to consume on; e.g. declare the topology first
        self.prepare: Callable[[object, object], object] | None = None
        # channel -> None: declare everything (after a 404 or a broker-side cancel)
        self.declare: Callable[[object], None] | None = None
        self.on_connection_lost: Callable[[Exception], None] | None = None

    @property
    def consuming(self) -> bool:
        return self.channel is not None and bool(self._consumer_tags)

    @property
    def why(self) -> str | None:
        """Why this consumer is not (fully) consuming now; None when it is."""
        if self._cancelled_by_us:
            return "stopped taking work"
        return self.rules.why

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
            # Straight onto pika's ioloop, not BlockingConnection's event queue: the flush makes
            # only non-blocking calls, so it runs inside the poll and process_data_events goes on
            # (the blocking wrapper returned and was re-entered once per batch of acks).
            connection._impl.ioloop.add_callback_threadsafe(self._flush_settles)
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
        plan = plan_flush(((d.generation, d.delivery_tag, how) for d, how in batch), self.generation,
                          channel is not None and channel.is_open, self._outstanding)
        if plan.dropped:
            log.debug("dropping %d settle(s) from a closed channel; the broker redelivers those messages",
                      plan.dropped)
        self._outstanding -= plan.settled
        # Requeues and rejects first: a `multiple` ack sent before them would cover their tags.
        # Through pika's channel beneath the BlockingChannel: that one runs the ioloop until the
        # socket is flushed after every frame (a nested poll per ack); these frames go straight
        # to the socket when nothing waits before them (send_now.py), else into pika's buffer,
        # which the ioloop sends on its next turn, in order with everything else on the socket.
        impl = getattr(channel, "_impl", channel)
        for tag in plan.requeue:
            impl.basic_nack(tag, requeue=True)
        for tag in plan.reject:
            impl.basic_reject(tag, requeue=False)
        for tag, multiple in plan.acks:
            impl.basic_ack(tag, multiple=multiple)

    def _on_message(self, channel, method, properties, body) -> None:
        """A delivery through pika's own path (before the fast path was installed, or one it left)."""
        if self._cancel_soon:
            # A cancel asked for in the read callback: send it now, before pika dispatches more
            # (basic_cancel requeues the deliveries still waiting in the BlockingChannel).
            self.cancel()
        queue = self._queue_of[method.consumer_tag]  # pika dispatches only consumers we started
        self._outstanding.add(method.delivery_tag)
        self.on_delivery(Delivery(queue, method.delivery_tag, method.redelivered, body, properties,
                                  self.generation, exchange=method.exchange, routing_key=method.routing_key))

    def _accepts(self, consumer_tag: str) -> bool:
        """The fast path takes deliveries of our live consumers on an open channel only."""
        channel = self.channel
        return (consumer_tag in self._consumer_tags and not self._cancel_soon and channel is not None
                and channel.is_open)

    def _on_fast_delivery(self, consumer_tag, delivery_tag, redelivered, exchange, routing_key, properties,
                          body) -> None:
        """Inside pika's read callback (deliver_frames): hand over, make no pika call."""
        self._outstanding.add(delivery_tag)
        self._in_read = True
        try:
            self.on_delivery(Delivery(self._consumer_tags[consumer_tag], delivery_tag, redelivered, body, properties,
                                      self.generation, exchange=exchange, routing_key=routing_key))
        finally:
            self._in_read = False

    def _on_cancel(self, method_frame) -> None:
        """The broker cancelled one of our consumers (its queue was deleted, or the queue's node
        went down). Without this callback consumption would just stop, silently."""
        queue = self._consumer_tags.pop(method_frame.method.consumer_tag, None)
        if queue is None or self.stop_requested:
            return
        retry = self.rules.on_cancel(self.clock(), queue)
        if retry.log:
            log.warning("%s", retry.log)
        self._resume_at[queue] = retry.at

    def _open(self) -> None:
        self.connection = connect_blocking(self.settings, name=self.name, attempts=1)
        self.generation += 1
        self._outstanding = set()
        try:
            channel = self.connection.channel()
            if self.rules.redeclare and self.declare is not None:
                self.declare(channel)
            elif self.prepare is not None:
                channel = self.prepare(self.connection, channel) or channel
            # One limit for the whole channel (global_qos): a child never holds more messages
            # than it has threads, whichever queues they came from. Quorum queues refuse global
            # QoS (540 NOT_IMPLEMENTED at basic.consume), so there each consumer gets the limit:
            # a child of k queues may hold k x threads (docs/operations.md, "A RabbitMQ cluster").
            quorum = getattr(self.settings, "queue_type", "classic") == "quorum"
            channel.basic_qos(prefetch_count=self.prefetch, global_qos=not quorum)
            channel.add_on_cancel_callback(self._on_cancel)
            self._consumer_tags = {}
            self._queue_of = {}
            self._resume_at = {}
            for queue in self.queues:
                tag = channel.basic_consume(queue, self._on_message)
                self._consumer_tags[tag] = self._queue_of[tag] = queue
            self._cancel_soon = False
            DeliverFrames(self.connection._impl, channel.channel_number, self._accepts,
                          self._on_fast_delivery).install()
            send_now.install(self.connection._impl)
        except Exception as exc:
            self._close_quietly()
            raise translate(exc, self.settings) from None
        self.channel = channel
        with self._lock:  # settles queued while disconnected belong to the old channel
            self._pending = collections.deque(item for item in self._pending if item[0].generation == self.generation)
            self._wake_scheduled = False

    def _resume_cancelled(self, now: float) -> None:
        """Declare again and consume the queues the broker cancelled, once their backoff passed."""
        due = [queue for queue, at in self._resume_at.items() if now >= at]
        if not due or self.channel is None:
            return
        if self.declare is not None:
            self.declare(self.channel)
        for queue in due:
            tag = self.channel.basic_consume(queue, self._on_message)
            self._consumer_tags[tag] = self._queue_of[tag] = queue
            del self._resume_at[queue]
        if not self._resume_at:
            line = self.rules.on_resumed(now)
            log.info("%s", line or f"consuming {', '.join(due)} again")

    def cancel(self) -> None:
        """Stop receiving new deliveries (pump thread); in-flight ones can still be acked. Asked
        for while a delivery is handed over inside pika's read callback, it takes effect as soon
        as that returns: no further delivery is taken there, and the run loop sends the cancel."""
        if self._in_read:
            self._cancel_soon = True
            return
        self._cancel_soon = False
        self._cancelled_by_us = True
        self._resume_at = {}
        # Forgotten first: while basic_cancel waits for its cancel-ok, deliveries still arrive and
        # the fast path must leave them to pika, which requeues them (as it did before the cancel).
        tags, self._consumer_tags = list(self._consumer_tags), {}
        if self.channel is not None and self.channel.is_open:
            for tag in tags:
                try:
                    self.channel.basic_cancel(tag)
                except Exception as exc:  # a dying channel: nothing more will be delivered anyway
                    log.debug("basic_cancel failed: %s", exc)

    def stop(self, how: str = "drain") -> None:
        """Ask the pump to stop: "drain" finishes in-flight work first, "now" closes at once."""
        if self.stop_requested != "now":
            self.stop_requested = how

    def run(self, tick: Callable[[], None], in_flight: Callable[[], int], drain_deadline: Callable[[], float]) -> None:
        """Pump until stopped. `in_flight()` counts deliveries still being worked on;
        `drain_deadline()` is the monotonic time after which a drain gives up."""
        import pika.exceptions as pe

        from utilitarian.errors import UtilitarianError

        while True:
            if self.stop_requested == "now":
                break
            if self.connection is None or not self.connection.is_open:
                if self.stop_requested:
                    break
                now = self.clock()
                if now < self._reconnect_at:
                    self._sleep_ticking(min(self.tick_interval, self._reconnect_at - now), tick)
                    continue
                try:
                    self._open()
                except UtilitarianError as exc:
                    decision = self.rules.on_open_failed(self.clock(), exc)
                    if isinstance(decision, Exit):
                        raise
                    if decision.log:
                        log.warning("%s", decision.log)
                    self._reconnect_at = decision.at
                    continue
                line = self.rules.on_consuming(self.clock())
                if line:
                    log.info("%s", line)
                log.info("consuming %s with prefetch %d", ", ".join(self.queues), self.prefetch)
                if self.on_consuming:
                    self.on_consuming()
            try:
                self.connection.process_data_events(time_limit=self.tick_interval)
                if self._cancel_soon:
                    self.cancel()
                if self._pending:
                    self._flush_settles()
                if self._resume_at and not self.stop_requested:
                    self._resume_cancelled(self.clock())
                tick()
                if self.stop_requested == "drain":
                    self.cancel()
                    if in_flight() == 0 and not self._pending:
                        break
                    if self.clock() >= drain_deadline():
                        log.warning("drain deadline passed with %d task(s) in flight; their messages "
                                    "will be redelivered", in_flight())
                        break
            except (pe.AMQPConnectionError, pe.AMQPChannelError, pe.StreamLostError, pe.ConnectionWrongStateError,
                    OSError) as exc:
                err = translate(exc, self.settings)
                self.channel = None
                self._consumer_tags = {}
                self._close_quietly()
                if self.on_connection_lost:
                    self.on_connection_lost(err)
                if self.stop_requested:
                    log.warning("connection lost while stopping (%s); unacked messages will be redelivered", err)
                    break
                decision = self.rules.on_connection_lost(self.clock(), err)
                log.warning("%s", decision.log)
                self._reconnect_at = decision.at
        self._close_quietly()

    def _sleep_ticking(self, seconds: float, tick: Callable[[], None]) -> None:
        if not self.stop_requested and seconds > 0:
            time.sleep(seconds)
        tick()

    def _close_quietly(self) -> None:
        connection, self.connection = self.connection, None
        self.channel = None
        self._consumer_tags = {}
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
        except Exception as exc:  # already broken; the broker will notice
            log.debug("closing connection: %s", exc)
