"""Real peers for the meter protocol tests: a byte-scripted TCP meter, and the simulators."""

from __future__ import annotations

import socket
import threading
import time

import pytest


class ScriptedMeter:
    """A TCP peer that expects exact bytes from the client and answers with exact bytes.

    script: [(expected, reply), ...]. It records what it actually received, and when (time.monotonic:
    `received_at` as each expected message was complete, `replied_at` as each reply was sent); a
    mismatch stops the script (the client then sees silence) and is reported by `check()`.
    """

    def __init__(self, script: list[tuple[bytes, bytes]], *, read_timeout: float = 5.0):
        self.script = list(script)
        self.read_timeout = read_timeout
        self.received: list[bytes] = []
        self.received_at: list[float] = []
        self.replied_at: list[float] = []
        self.trailing = b""
        self.error: str | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_exactly(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            self.error = "client never connected"
            return
        conn.settimeout(self.read_timeout)
        with conn:
            try:
                for expected, reply in self.script:
                    got = self._read_exactly(conn, len(expected))
                    self.received.append(got)
                    self.received_at.append(time.monotonic())
                    if got != expected:
                        self.error = f"expected {expected!r}, got {got!r}"
                        return
                    if reply:
                        self.replied_at.append(time.monotonic())
                        conn.sendall(reply)
                # Collect what the client sends after the script (B0) until it hangs up; a
                # silent meter keeps the line open, as a real one does.
                conn.settimeout(3.0)
                while chunk := conn.recv(100):
                    self.trailing += chunk
            except OSError:
                pass

    def url(self, scheme: str = "iec62056-21+tcp", **params) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{scheme}://127.0.0.1:{self.port}" + (f"?{query}" if query else "")

    def check(self) -> None:
        self.thread.join(5)
        assert self.error is None, self.error

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted_meter():
    peers: list[ScriptedMeter] = []

    def make(script, **kwargs) -> ScriptedMeter:
        peer = ScriptedMeter(script, **kwargs)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()
