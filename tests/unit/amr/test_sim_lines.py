"""The IEC simulator's gateway bookkeeping must survive a line its own serving thread closed:
the accept loop asks every earlier line whether its client left, and a closed socket (fd -1)
made select() raise ValueError, which killed the gateway's accept loop (every later meter behind
that gateway became unreachable; the AMR fault harness caught it)."""

import socket

from utilitarian_sim.iec_server import SocketLine


def test_a_line_closed_by_its_serving_thread_counts_as_closed():
    a, b = socket.socketpair()
    try:
        line = SocketLine(a)
        assert not line.peer_closed()
        line.close()
        assert line.peer_closed()
    finally:
        b.close()


def test_a_client_that_hung_up_counts_as_closed():
    a, b = socket.socketpair()
    line = SocketLine(a)
    b.close()
    assert line.peer_closed()
    line.close()
