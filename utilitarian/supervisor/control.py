"""The master's Unix control socket (one JSON request per connection, one JSON answer) and the
client side `utilitarian status` uses. The master serves it from its own loop without ever
waiting on a client (utilitarian.supervisor.clients)."""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import socket

from utilitarian.supervisor.clients import ClientServer

log = logging.getLogger(__name__)


def socket_path(runtime_dir: str, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
    return os.path.join(runtime_dir, f"worker-{safe}.sock")


class ControlServer(ClientServer):
    what = "control"

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            if _alive(path):
                raise OSError(errno.EADDRINUSE, f"another worker answers on {path}")
            os.unlink(path)  # stale: its master died without cleaning up
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o660)
        sock.listen(64)
        super().__init__(sock)

    def complete(self, data: bytes, eof: bool) -> bool:
        return data.endswith(b"\n") or (eof and bool(data))

    def respond(self, data: bytes, handler) -> bytes:
        """`handler(request_dict) -> dict`; a request that is not JSON is taken as a bare command."""
        try:
            request = json.loads(data or b"{}")
        except ValueError:
            request = {"cmd": data.decode("utf-8", "replace").strip()}
        if not isinstance(request, dict):
            request = {}
        return json.dumps(handler(request), default=str).encode() + b"\n"

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def query(path: str, request: dict | None = None, timeout: float = 5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request or {"cmd": "status"}).encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def discover(runtime_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(runtime_dir, "worker-*.sock")))
