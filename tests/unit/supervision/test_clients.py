"""Local clients served without blocking (real sockets, the clock injected): a trickling client
never holds `serve`, idle and slow clients are dropped at their deadline, the number of clients is
bounded, a big answer to a slow reader is written in parts, and both protocols answer."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from utilitarian.supervisor.clients import CLIENT_DEADLINE, MAX_CLIENTS, wait_io
from utilitarian.supervisor.control import ControlServer, query
from utilitarian.supervisor.metrics import MetricsServer


@pytest.fixture
def control(tmp_path):
    server = ControlServer(str(tmp_path / "run" / "worker-t.sock"))
    yield server
    server.close()


def connect(server: ControlServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(server.path)
    s.settimeout(5.0)
    return s


def turn(server, now: float, handler, timeout: float = 0.2) -> None:
    """One turn of a master loop: wait on the server's descriptors, then serve without waiting."""
    readable, writable = wait_io(server.read_fds(), server.write_fds(), timeout)
    done = threading.Event()

    def run():
        server.serve(readable, writable, now, handler)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5.0)
    assert done.is_set(), "serve() blocked on a client"


def answer(request):
    return {"echo": request}


def test_a_trickling_client_never_holds_the_loop_and_is_answered_when_complete(control):
    c = connect(control)
    for i, byte in enumerate(b'{"cmd": "status"}\n'):
        c.send(bytes([byte]))
        turn(control, 0.01 * i, answer)  # each turn returns at once with whatever arrived
    assert json.loads(c.recv(65536)) == {"echo": {"cmd": "status"}}
    assert c.recv(10) == b""  # then the master closes


@pytest.mark.parametrize("sent", [b"", b'{"cmd": "sta'])
def test_idle_and_slow_clients_are_dropped_at_their_deadline(control, sent):
    c = connect(control)
    c.send(sent) if sent else None
    turn(control, 0.0, answer)  # accepted at 0.0
    turn(control, CLIENT_DEADLINE - 0.01, answer, timeout=0.05)
    assert len(control.clients) == 1
    turn(control, CLIENT_DEADLINE, answer, timeout=0.05)
    assert control.clients == {} and control.dropped == 1
    assert c.recv(10) == b""


def test_the_number_of_clients_is_bounded_and_extra_ones_are_closed_at_once(control):
    idle = [connect(control) for _ in range(MAX_CLIENTS + 3)]
    for _ in range(3):
        turn(control, 0.0, answer)
    assert len(control.clients) == MAX_CLIENTS
    readable, _ = wait_io([s.fileno() for s in idle], [], 0.5)
    assert sum(s.recv(1) == b"" for s in idle if s.fileno() in readable) == 3  # the extra ones see EOF
    for s in idle:
        s.close()


def test_a_big_answer_to_a_slow_reader_is_written_in_parts(control):
    big = {"blob": "x" * (4 << 20)}
    c = connect(control)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sendall(b"{}\n")
    turn(control, 0.0, lambda r: big)
    assert control.write_fds()  # not all of it fitted: the rest waits for the client
    received = bytearray()
    while len(control.clients):
        received += c.recv(1 << 20)
        turn(control, 0.1, answer, timeout=0.01)
    while True:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    assert json.loads(received) == big


def test_control_protocol(control):
    results = {}

    def client(name, payload):
        s = connect(control)
        s.sendall(payload)
        if not payload.endswith(b"\n"):
            s.shutdown(socket.SHUT_WR)
        results[name] = json.loads(s.makefile("rb").read())

    threads = [threading.Thread(target=client, args=a) for a in (
        ("json", b'{"cmd": "status"}\n'), ("bare", b"status\n"), ("eof", b'{"cmd": "x"}'), ("list", b"[1]\n"))]
    for t in threads:
        t.start()
    for i in range(50):
        turn(control, 0.01 * i, answer, timeout=0.05)
        if len(results) == 4:
            break
    for t in threads:
        t.join(5)
    assert results == {"json": {"echo": {"cmd": "status"}}, "bare": {"echo": {"cmd": "status"}},
                       "eof": {"echo": {"cmd": "x"}}, "list": {"echo": {}}}


def test_query_is_the_client_side(control):
    out = {}
    t = threading.Thread(target=lambda: out.update(query(control.path)))
    t.start()
    for i in range(50):
        turn(control, 0.01 * i, answer, timeout=0.05)
        if out:
            break
    t.join(5)
    assert out == {"echo": {"cmd": "status"}}


@pytest.mark.parametrize("path,status,body", [("/metrics", b"200 OK", b"text 1\n"), ("/", b"200 OK", b"text 1\n"),
                                               ("/nope", b"404 Not Found", b"not found\n")])
def test_metrics_http(path, status, body):
    server = MetricsServer("127.0.0.1", 0)
    try:
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
        turn(server, 0.0, lambda: "text 1\n")
        assert server.write_fds() == [] and len(server.clients) == 1  # headers not finished yet
        c.sendall(b"\r\n")
        turn(server, 0.1, lambda: "text 1\n")
        reply = c.makefile("rb").read()
        assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.0 " + status
        assert reply.endswith(b"\r\n\r\n" + body)
    finally:
        server.close()
