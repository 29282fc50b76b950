"""The stepwise task of docs/writing-a-task.md (examples/stepwise_ask.py) against a real TCP peer:
called directly it runs to its end in the calling thread (steps.drive); the worker parks its wait."""

from __future__ import annotations

import pathlib
import socket
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "examples"))

import stepwise_ask  # noqa: E402

from utilitarian.steps import Readable  # noqa: E402


def peer(answer: bytes | None):
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if answer is not None:
                conn.sendall(answer)
            else:
                conn.recv(64)  # silent until the task gives up and closes
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_the_example_answers_when_called_directly():
    assert stepwise_ask.ask("127.0.0.1", peer(b"42\r\n")) == "42"


def test_the_example_yields_a_readable_wait_to_the_worker():
    steps = stepwise_ask.ask.steps("127.0.0.1", peer(b"7\r\n"))
    wait = next(steps)
    assert isinstance(wait, Readable)
    try:
        steps.send(True)
    except StopIteration as done:
        assert done.value == "7"
    else:
        raise AssertionError("the task asked for another wait")


def test_the_example_times_out_as_its_deadline_passes():
    steps = stepwise_ask.ask.steps("127.0.0.1", peer(None))
    next(steps)
    try:
        steps.send(False)  # what the wait loop sends when the deadline passed first
    except TimeoutError as exc:
        assert "no answer" in str(exc)
    else:
        raise AssertionError("no TimeoutError")
