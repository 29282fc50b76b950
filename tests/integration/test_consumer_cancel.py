"""The consumer's cancel against a real RabbitMQ: deliveries that pika still holds for a consumer we
cancelled keep the queue they came from, whatever their routing key.

A child reaching --max-tasks-per-child cancels inside pika's read callback; the rest of that read
is dispatched by pika afterwards. Each such delivery used to take its routing key as its queue,
and a message that came through the delay levels (a retry, a counted redelivery, an ETA) carries
the levels' key: its next retry or counted copy went to a queue of that name, which the levels
cannot deliver to, and the broker dropped it (one task in 600 lost in the recycling test)."""

from __future__ import annotations

import threading
import time

from utilitarian import queues
from utilitarian.broker import delay
from utilitarian.broker.consumer import ACK, Consumer
from utilitarian.broker.publisher import ConfirmedPublisher, Outgoing
from utilitarian.broker.topology import declare_topology, inspect_queues

BURST = 20


def test_deliveries_held_by_pika_after_a_cancel_keep_their_queue(broker_settings):
    declare_topology(broker_settings)
    publisher = ConfirmedPublisher(broker_settings)
    got = []  # (queue, routing key, handed over by pika after our cancel)
    state = {"burst": False}

    def on_delivery(delivery):
        after_cancel = not consumer._in_read and consumer._cancelled_by_us
        got.append((delivery.queue, delivery.routing_key, after_cancel))
        consumer.settle(delivery, ACK)
        if not state["burst"]:
            # The first message: while the pump is held here, a burst through the delay levels
            # (no delay: straight through, keeping the levels' routing key) fills the socket, so
            # the pump's next read holds several deliveries.
            state["burst"] = True
            exchange, key = delay.route(queues.DEFAULT, 0)
            publisher.publish_many([Outgoing(exchange, key, b"[[], {}, {}]", {"delivery_mode": 2})
                                    for _ in range(BURST)])
            time.sleep(0.5)
        elif len(got) == 2:
            consumer.cancel()  # the first of the burst: inside the read callback, as at a task limit

    consumer = Consumer(broker_settings, [queues.DEFAULT], prefetch=BURST + 1, on_delivery=on_delivery)
    publisher.publish(Outgoing("", queues.DEFAULT, b"[[], {}, {}]", {"delivery_mode": 2}))
    pump = threading.Thread(target=consumer.run, args=(lambda: None, lambda: 0, lambda: 0.0), daemon=True)
    pump.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(after for _, _, after in got):
            time.sleep(0.05)
        time.sleep(0.3)  # what pika dispatches after the cancel, then its rejects of the rest
    finally:
        consumer.stop("now")
        pump.join(10)
        publisher.close()
    late = [(queue, key) for queue, key, after in got if after]
    assert late, f"no delivery reached us through pika after the cancel: {got}"
    assert all(key != queues.DEFAULT for _, key in late)  # they did come through the levels
    assert {queue for queue, _, _ in got} == {queues.DEFAULT}
    # nothing lost: what was not acked went back to the queue
    assert inspect_queues(broker_settings, [queues.DEFAULT])[0].messages == BURST + 1 - len(got)
