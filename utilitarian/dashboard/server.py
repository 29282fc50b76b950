"""The dashboard's HTTP server: the standard library's ThreadingHTTPServer, one thread per
connection, each with a socket timeout so a client that sends slowly or never reads holds only its
own thread. Routes: `/` (the page), `/app.js`, `/style.css`, `/api/state` (the collector's latest
document), `/login` (token -> cookie). Everything but the login form needs access (auth.py)."""

from __future__ import annotations

import importlib.resources
import logging
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from utilitarian.dashboard.auth import COOKIE, Access

log = logging.getLogger(__name__)

CLIENT_TIMEOUT = 15.0  # seconds a connection may stay silent (slowloris) or unread before it is dropped
MAX_CLIENTS = 64  # connections served at once; more are closed at once (each holds a thread)
MAX_FORM = 4096  # bytes of a login form; a longer body is refused unread
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
}
DENIED = b"401 Unauthorized: this dashboard needs its token.\n"


def _static(name: str) -> bytes:
    return importlib.resources.files("utilitarian.dashboard").joinpath("static", name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    timeout = CLIENT_TIMEOUT
    server_version = "utilitarian-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:
        # The default writes every request line to stderr; the query string could hold anything a
        # client typed, so only the path and status are logged, and at debug.
        log.debug("%s %s -> %s", self.command, self.route(), args[1] if len(args) > 1 else "")

    def route(self) -> str:
        return self.path.split("?", 1)[0].split("#", 1)[0]

    def do_GET(self) -> None:
        path = self.route()
        if path == "/login":
            return self.send(200, _static("login.html"), "text/html; charset=utf-8")
        if path == "/style.css":  # the login page needs it before access
            return self.send(200, _static("style.css"), STATIC[path][1])
        if not self.server.access.allows(self.headers):
            return self.deny(form=path == "/")
        if path == "/api/state":
            return self.send(200, self.server.document(), "application/json")
        if path in STATIC:
            name, kind = STATIC[path]
            return self.send(200, _static(name), kind)
        self.send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.send(405, b"", "text/plain")

    def do_POST(self) -> None:
        if self.route() != "/login":
            return self.send(405, b"read-only\n", "text/plain; charset=utf-8")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM:
            self.close_connection = True
            return self.send(400, b"bad form\n", "text/plain; charset=utf-8")
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        offered = (form.get("token") or [""])[0]
        if not self.server.access.accepts(offered):
            return self.deny(form=True)
        self.send_response(303)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie",
                         f"{COOKIE}={self.server.access.session_value()}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def deny(self, *, form: bool = False) -> None:
        """401 with nothing of the page: no data, no hint which part of the token was wrong. A
        browser asking for the page gets the token form (static, no data) instead of the line."""
        if form:
            body, kind = _static("login.html"), "text/html; charset=utf-8"
        else:
            body, kind = DENIED, "text/plain; charset=utf-8"
        self.send(401, body, kind, extra={"WWW-Authenticate": 'Bearer realm="utilitarian"'})

    def send(self, code: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(code)
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client thread never keeps the process from exiting
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of browsers overflowed it and waited for
    # TCP's SYN retransmit (1 s, then 3 s) before being accepted at all.
    request_queue_size = 128

    def __init__(self, address, access: Access, document):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.access = access
        self.document = document
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, Handler)

    def handle_error(self, request, client_address) -> None:
        """socketserver prints a traceback to stderr for any error; a client that went away is normal."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("dashboard client %s went away", client_address[0])
            return
        log.error("dashboard request from %s failed; the connection is closed", client_address[0], exc_info=True)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("%d dashboard connections open; closing a new one", MAX_CLIENTS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: give its slot back
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


@dataclass
class Running:
    """A started dashboard: its URL, and `stop()`."""

    url: str
    server: DashboardServer
    collector: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.collector.close()
        self.thread.join(10.0)


def start(config, *, bind: str = "127.0.0.1", port: int = 8480, token: str | None = None,
          interval: float | None = None) -> Running:
    """Start the collector and the server (threads of this process); raises ConfigError for a
    non-loopback bind without a token, OSError when the port cannot be bound."""
    from utilitarian.dashboard.collector import INTERVAL, Collector

    access = Access.for_bind(bind, token)
    # The probes expect 404s (a queue or the beat lock missing is what the page reports); pika
    # would log each one as a warning every few seconds.
    logging.getLogger("pika.channel").setLevel(logging.ERROR)
    collector = Collector(config, interval=interval or INTERVAL)
    server = DashboardServer((bind.strip("[]"), port), access, collector.latest)
    collector.start()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="dashboard-http", daemon=True)
    thread.start()
    host, bound_port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return Running(f"http://{shown}:{bound_port}/", server, collector, thread)
