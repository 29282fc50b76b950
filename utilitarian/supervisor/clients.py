"""Local clients of the master (control socket, metrics port), served without ever blocking its
loop: non-blocking sockets, a buffer and a deadline per client, a bounded number of clients; slow,
idle or oversized clients are dropped. `wait_io` waits on them together with the children."""

from __future__ import annotations

import logging
import select
import socket
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)
CLIENT_DEADLINE = 2.0  # seconds from accept to the last byte of the answer; a local query needs ms
MAX_CLIENTS = 16  # per server; more are accepted and closed at once (never left hanging)
MAX_REQUEST = 65536
ACCEPTS_PER_TURN = 64  # a connection flood cannot keep the loop accepting


@dataclass(eq=False)
class Client:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: memoryview | None = None  # set once the request is complete: the answer still to send

    def fileno(self) -> int:
        return self.sock.fileno()


class ClientServer:
    """A listening socket and its clients. Subclasses say when a request is complete and how to
    answer it; `serve` moves every client as far as it can without waiting."""

    what = "client"

    def __init__(self, sock: socket.socket, *, max_clients: int = MAX_CLIENTS, deadline: float = CLIENT_DEADLINE):
        sock.setblocking(False)
        self.sock = sock
        self.max_clients = max_clients
        self.deadline = deadline
        self.clients: dict[int, Client] = {}
        self.dropped = 0  # clients closed before they got an answer (slow, idle, too big, too many)

    # --- protocol, per subclass ---------------------------------------------------------------
    def complete(self, data: bytes, eof: bool) -> bool:
        raise NotImplementedError

    def respond(self, data: bytes, handler: Callable) -> bytes:
        raise NotImplementedError

    # --- the loop's side ------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def read_fds(self) -> list[int]:
        return [self.sock.fileno()] + [fd for fd, c in self.clients.items() if c.outbox is None]

    def write_fds(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.outbox is not None]

    def next_deadline(self) -> float:
        return min((c.deadline for c in self.clients.values()), default=float("inf"))

    def serve(self, readable: set, writable: set, now: float, handler: Callable) -> None:
        new = self._accept(now) if self.sock.fileno() in readable else set()
        for fd, client in list(self.clients.items()):
            if client.outbox is None and (fd in readable or fd in new):  # a new client may have spoken already
                self._read(client, handler)
            elif client.outbox is not None and fd in writable:
                self._write(client)
        for fd, client in list(self.clients.items()):
            if now >= client.deadline:
                self._drop(client, "no complete request or answer within %.1fs" % self.deadline)

    def _accept(self, now: float) -> set[int]:
        new: set[int] = set()
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EMFILE and friends: try again next turn
                log.warning("%s socket: accept failed: %s", self.what, exc)
                break
            if len(self.clients) >= self.max_clients:
                self.dropped += 1
                log.debug("%s: %d clients already; closing a new one", self.what, len(self.clients))
                conn.close()
                continue
            conn.setblocking(False)
            self.clients[conn.fileno()] = Client(conn, now + self.deadline)
            new.add(conn.fileno())
        return new

    def _read(self, client: Client, handler: Callable) -> None:
        try:
            chunk = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, str(exc))
            return
        eof = not chunk
        client.inbox += chunk
        if len(client.inbox) > MAX_REQUEST:
            self._drop(client, "request over %d bytes" % MAX_REQUEST)
            return
        if not self.complete(bytes(client.inbox), eof):
            if eof:
                self._drop(client, "closed before a complete request")
            return
        try:
            answer = self.respond(bytes(client.inbox), handler)
        except Exception:  # a bug in an answer must not take the master down
            log.exception("%s: answering failed", self.what)
            self._drop(client, "answer failed")
            return
        client.outbox = memoryview(answer)
        self._write(client)  # most answers fit in the socket buffer: done this turn

    def _write(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, str(exc))
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._close(client)

    def _drop(self, client: Client, why: str) -> None:
        self.dropped += 1
        log.debug("%s client dropped: %s", self.what, why)
        self._close(client)

    def _close(self, client: Client) -> None:
        self.clients.pop(client.fileno(), None)
        try:
            client.sock.close()
        except OSError:
            pass

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        self.sock.close()


def wait_io(read_fds, write_fds, timeout: float) -> tuple[set, set]:
    """Which of these descriptors are readable / writable, waiting at most `timeout` seconds.
    Hang-ups and errors count as readable (a child's sentinel, a client that went away)."""
    poller = select.poll()
    for fd in read_fds:
        poller.register(fd, select.POLLIN)
    for fd in write_fds:
        poller.register(fd, select.POLLOUT)
    readable, writable = set(), set()
    try:
        ready = poller.poll(max(0.0, timeout) * 1000.0)
    except InterruptedError:  # a signal: the wake-up pipe has it, the loop turns
        return readable, writable
    for fd, mask in ready:
        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            readable.add(fd)
        if mask & (select.POLLOUT | select.POLLHUP | select.POLLERR):
            writable.add(fd)
    return readable, writable
