"""Frames written straight to the socket when nothing is queued before them. pika's transport
buffers every write and turns on a writability watcher, so each batch of acks cost two epoll_ctl
calls, another turn of the ioloop and pika's writer callbacks before the one send (and every
system call there releases the GIL, a thread switch when a task thread waits for it). Installed
per connection, on the pump thread that owns it; plaintext sockets only (an SSL socket can want
a read before it writes, which pika's transport handles)."""

from __future__ import annotations

import errno

from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport as _PlaintextTransport

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def install(connection) -> bool:
    """`connection`: pika's connection implementation (BlockingConnection._impl). True if installed."""
    transport = getattr(connection, "_transport", None)
    if type(transport) is not _PlaintextTransport:
        return False
    transport.write = _SendNow(transport).write
    return True


class _SendNow:
    def __init__(self, transport):
        self.transport = transport
        self.buffered_write = transport.write  # pika's: buffer, then send when writable

    def write(self, data: bytes) -> None:
        t = self.transport
        if t._state == t._STATE_ACTIVE and not t._tx_buffers and data:
            try:
                sent = t._sock.send(data)
            except OSError as exc:
                if exc.errno not in _AGAIN:
                    # pika's writer meets the same error on its send and aborts the connection
                    # the way it always does.
                    self.buffered_write(data)
                    return
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]  # the rest in order, through pika's buffer
        self.buffered_write(data)
