"""How a simulator serves its gateways: TCP ports accepted by one thread for all of them, or ptys;
each conversation on a thread of its own.

The simulators used to run one accept thread per port, each waking every 0.2 s to look at its stop
flag: with 2,000 simulated gateways that is 2,000 threads and 10,000 wake-ups a second before a
single meter is polled, on a machine the worker under test shares. One selector over every
listening socket costs nothing while idle and drains each port's backlog as soon as it fills, so a
burst of 200 polls connecting at once is accepted in one pass, not after 200 thread switches.
"""

from __future__ import annotations

import errno
import logging
import resource
import select
import selectors
import socket
import threading
import time
from typing import Callable, Sequence

log = logging.getLogger(__name__)

# Connections a port queues before the kernel drops SYNs. Python's default (128) is enough for one
# meter per port; a gateway port that serves many parallel sessions can see a whole burst.
BACKLOG = 1024
# How long the loop sleeps when the process is out of file descriptors (EMFILE), so connections that
# close free some; an accept loop that gave up there left its port dead until the simulator restarted.
FD_PAUSE = 0.05


def ensure_descriptors(listeners: int) -> None:
    """Raise the soft RLIMIT_NOFILE (up to the hard limit) so `listeners` ports and as many
    conversations fit: many systems start processes at 1,024, which 2,000 simulated gateways
    overrun before the first poll."""
    wanted = 2 * listeners + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            log.info("open files limit raised from %d to %d for %d ports", soft, new, listeners)
        if new < wanted:
            log.warning("open files limit %d (hard) is below the %d that %d ports need",
                        new, wanted, listeners)


def readable(fd: int, timeout: float) -> bool:
    """True once `fd` has data (or EOF) within `timeout` seconds. poll, not select: select.select
    refuses descriptors >= 1024 (FD_SETSIZE) with ValueError, and a simulator with 2,000 ports
    gives every conversation such a descriptor; each one failed and its client saw a reset."""
    if fd < 0:  # a socket another thread closed meanwhile
        raise OSError(errno.EBADF, "line closed")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


class Acceptor:
    """Listens on `ports` (0 = any free port) at `host`; each accepted connection goes to
    `on_accept(index, conn)` on the acceptor's thread, so that callback must hand the conversation
    on (a thread, a queue) and return. `ports` after `start()` holds the bound port numbers."""

    def __init__(self, host: str, ports: Sequence[int], on_accept: Callable[[int, socket.socket], None],
                 *, name: str = "sim-accept", backlog: int = BACKLOG):
        self.host, self.on_accept, self.name, self.backlog = host, on_accept, name, backlog
        self._wanted = list(ports)
        self.ports: list[int] = []
        self._listeners: list[socket.socket] = []
        self._selector: selectors.BaseSelector | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def listen(self) -> list[int]:
        """Bind every port (connections queue in the backlog until `start`); the bound ports."""
        if self._selector is not None:
            return self.ports
        ensure_descriptors(len(self._wanted))
        selector = selectors.DefaultSelector()
        try:
            for index, port in enumerate(self._wanted):
                listener = socket.create_server((self.host, port), backlog=self.backlog)
                listener.setblocking(False)
                self._listeners.append(listener)
                self.ports.append(listener.getsockname()[1])
                selector.register(listener, selectors.EVENT_READ, index)
        except BaseException:
            selector.close()
            self._close_listeners()
            raise
        self._selector = selector
        return self.ports

    def start(self) -> list[int]:
        self.listen()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=self.name)
        self._thread.start()
        return self.ports

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting; the listeners close once the loop has let go of them (closing a socket
        another thread is selecting on is a race on its fd number)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._selector is not None:
            self._selector.close()
        self._close_listeners()

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._selector.select(timeout=0.2):
                self._drain(key.fileobj, key.data)

    def _drain(self, listener: socket.socket, index: int) -> None:
        """Accept everything queued on one port."""
        while not self._stop.is_set():
            try:
                conn, _peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s: cannot accept on port %d (%s); retrying", self.name,
                                self.ports[index], exc.strerror)
                    time.sleep(FD_PAUSE)
                return  # ECONNABORTED and the like: that one client gave up
            conn.setblocking(True)
            try:
                self.on_accept(index, conn)
            except Exception:  # one connection the callback could not take must not end the loop
                log.exception("%s: connection on port %d dropped", self.name, self.ports[index])
                conn.close()


class Conversations:
    """The threads serving conversations, one each, so `stop` can wait for them."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def spawn(self, target: Callable[..., None], *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=self.name)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


class Gateways:
    """A simulator's gateways: `count` TCP ports served by one Acceptor (transport "tcp"), or one
    pty line each ("pty", lines from `open_pty`). `open()` makes them and names them (`names`, as
    clients address them); `serve()` starts taking connections, each handed to
    `on_accept(index, conn)`; `close()` stops that and closes the ptys."""

    def __init__(self, count: int, transport: str, *, host: str = "127.0.0.1", ports=None,
                 on_accept: Callable[[int, socket.socket], None] | None = None,
                 open_pty: Callable[[], object] | None = None, name: str = "sim"):
        if transport not in ("tcp", "pty"):
            raise ValueError("transport must be 'tcp' or 'pty'")
        self.count, self.transport, self.host = count, transport, host
        self._wanted = list(ports) if ports is not None else [0] * count
        self._on_accept, self._open_pty, self.name = on_accept, open_pty, name
        self.ports: list[int] = []
        self.devices: list[str] = []
        self.lines: list = []
        self.names: list[str] = []
        self._acceptor: Acceptor | None = None

    def open(self) -> list[str]:
        if self.transport == "tcp":
            self._acceptor = Acceptor(self.host, self._wanted, self._on_accept, name=f"{self.name}-accept")
            self.ports = self._acceptor.listen()
            self.names = [f"{self.host}:{p}" for p in self.ports]
        else:
            self.lines = [self._open_pty() for _ in range(self.count)]
            self.devices = [line.path for line in self.lines]
            self.names = list(self.devices)
        return self.names

    def serve(self) -> None:
        if self._acceptor is not None:
            self._acceptor.start()

    def stop_accepting(self, timeout: float = 5.0) -> None:
        if self._acceptor is not None:
            self._acceptor.stop(timeout)

    def close_lines(self) -> None:
        for line in self.lines:
            line.close()
