"""Frames go straight to the socket only when nothing is buffered before them; the rest of a
partial send, and everything after an error, goes through pika's buffered write, in order.
A socketpair stands in for the broker connection (the worker and fault suites run the real one)."""

from __future__ import annotations

import collections
import socket

import pytest
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport

from utilitarian.broker import send_now


class Connection:
    def __init__(self, transport):
        self._transport = transport


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


def transport_on(sock):
    t = _AsyncPlaintextTransport.__new__(_AsyncPlaintextTransport)
    t._sock = sock
    t._state = t._STATE_ACTIVE
    t._tx_buffers = collections.deque()
    buffered = []
    t.write = buffered.append  # stands in for pika's buffered write
    assert send_now.install(Connection(t))
    return t, buffered


def drain(peer) -> bytes:
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_with_nothing_buffered_the_frame_is_sent_at_once(pair):
    ours, peer = pair
    t, buffered = transport_on(ours)
    t.write(b"ack-frame")
    assert drain(peer) == b"ack-frame" and buffered == []


def test_behind_buffered_bytes_the_frame_waits_its_turn(pair):
    ours, peer = pair
    t, buffered = transport_on(ours)
    t._tx_buffers.append(b"earlier")
    t.write(b"later")
    assert drain(peer) == b"" and buffered == [b"later"]


def test_a_partial_send_buffers_the_rest_in_order(pair):
    ours, peer = pair
    t, buffered = transport_on(ours)
    data = bytes(range(256)) * 40_000  # more than a socketpair's buffers hold
    t.write(data)
    got = drain(peer)
    assert 0 < len(got) < len(data)
    assert got + b"".join(buffered) == data


def test_a_full_socket_buffers_everything(pair):
    ours, peer = pair
    t, buffered = transport_on(ours)
    while True:  # fill the socket's buffers
        try:
            ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    t.write(b"frame")
    assert buffered == [b"frame"]


def test_after_an_error_pikas_write_gets_the_data_and_reports_it(pair):
    ours, peer = pair
    t, buffered = transport_on(ours)
    peer.close()
    t.write(b"frame")  # EPIPE: pika's writer meets it again and aborts the connection
    assert buffered == [b"frame"]


def test_an_inactive_transport_is_left_to_pika(pair):
    ours, peer = pair
    t, buffered = transport_on(ours)
    t._state = t._STATE_ABORTED_BY_USER
    t.write(b"frame")
    assert buffered == [b"frame"] and drain(peer) == b""


def test_other_transports_are_left_alone():
    assert send_now.install(Connection(object())) is False
    assert send_now.install(object()) is False
