"""The master's Unix control socket (one JSON request per connection, one JSON answer) and the
client side `utilitarian status` uses. The master serves it from its own loop, never a thread."""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import socket

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 0.5  # a client that does not speak within this is dropped; the loop moves on


def socket_path(runtime_dir: str, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
    return os.path.join(runtime_dir, f"worker-{safe}.sock")


class ControlServer:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            if _alive(path):
                raise OSError(errno.EADDRINUSE, f"another worker answers on {path}")
            os.unlink(path)  # stale: its master died without cleaning up
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o660)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self, answer) -> None:
        """Serve every pending client; `answer(request_dict) -> dict`."""

        def serve(conn: socket.socket) -> None:
            data = b""
            while not data.endswith(b"\n") and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                request = json.loads(data or b"{}")
            except ValueError:
                request = {"cmd": data.decode("utf-8", "replace").strip()}
            if not isinstance(request, dict):
                request = {}
            conn.sendall(json.dumps(answer(request), default=str).encode() + b"\n")

        serve_pending(self.sock, serve, "control")

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def serve_pending(sock: socket.socket, serve, what: str) -> None:
    """Accept and serve, one at a time, every client waiting on a non-blocking listening socket;
    a client that stalls past REQUEST_TIMEOUT is dropped so the master's loop moves on."""
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            serve(conn)
        except OSError as exc:
            log.debug("%s client dropped: %s", what, exc)
        finally:
            conn.close()


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
