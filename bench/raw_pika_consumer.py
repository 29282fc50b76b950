"""The floor: one process, one pika BlockingConnection, prefetch 100, each message appends a
byte to the counter file and is acked on its own. No decoding, no threads, no supervision."""

from __future__ import annotations

import os
import sys

import pika


def main() -> None:
    url, queue, counter, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    done = 0
    for method, _props, _body in ch.consume(queue):
        os.write(fd, b"x")
        ch.basic_ack(method.delivery_tag)
        done += 1
        if done >= n:
            break
    ch.cancel()
    conn.close()


if __name__ == "__main__":
    main()
