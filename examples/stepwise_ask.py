# A stepwise task: it yields its wait for the answer instead of blocking a thread on it.
# tests/unit/core/test_stepwise_example.py runs it against a real TCP peer.
import socket
import time

from utilitarian import steps
from utilitarian.tasks import task


@task("acme.ask")
def ask(host: str, port: int, question: str = "?") -> str:
    # A blocking call is allowed in a step; it holds the thread while it runs.
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(question.encode() + b"\r\n")
        answered = yield steps.Readable(sock.fileno(), time.monotonic() + 5.0)
        if not answered:  # False: the deadline passed first
            raise TimeoutError("no answer within 5 s")
        return sock.recv(512).decode().strip()
