"""The floor: one process, one pika BlockingConnection, prefetch 100, each message appends a byte to
the counter file; acks are coalesced (`multiple=True`, one frame per 50 messages or whenever the
channel has nothing more to deliver). No decoding, no threads, no supervision."""

from __future__ import annotations

import os
import sys

import pika

PREFETCH = 100
ACK_EVERY = PREFETCH // 2  # half the window: the broker never runs dry waiting for our ack


def main() -> None:
    url, queue, counter, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    done = unacked = 0
    for method, _props, _body in ch.consume(queue, inactivity_timeout=0.001):
        if method is None:  # nothing buffered: ack what we have
            if unacked:
                ch.basic_ack(last, multiple=True)
                unacked = 0
            continue
        os.write(fd, b"x")
        last = method.delivery_tag
        unacked += 1
        done += 1
        if unacked >= ACK_EVERY or done >= n:
            ch.basic_ack(last, multiple=True)
            unacked = 0
        if done >= n:
            break
    ch.cancel()
    conn.close()


if __name__ == "__main__":
    main()
