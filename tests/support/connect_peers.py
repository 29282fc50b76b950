"""TCP peers for connect tests: a port that refuses, and a listener whose backlog is full (a connect
to it stays in its handshake: the kernel drops the SYNs, as a blackholed address would). No
non-routable address is used: this host's network may answer for any of them."""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Iterator


def refusing_port() -> int:
    """A loopback port nothing listens on (bound once, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose accept queue is full: a connect to
    it does not complete. Filled with connects until one stays in its handshake for 0.5 s."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(64):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            fillers.append(client)
            client.connect_ex(("127.0.0.1", port))
            poller = select.poll()
            poller.register(client, select.POLLOUT)
            if not poller.poll(500):
                break  # this one hangs in its handshake: the queue is full
        else:
            raise RuntimeError("the listen backlog never filled up")
        yield port
    finally:
        for client in fillers:
            client.close()
        listener.close()
