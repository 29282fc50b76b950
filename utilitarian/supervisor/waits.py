"""A child's wait loop: where stepwise tasks (utilitarian/steps.py) wait without a thread. One
thread sleeps in one epoll for every parked socket wait and until the earliest deadline; a wait
that ends (readable, completed from another thread, deadline passed, or cancelled) hands its token
back through `resume(token, value)`, which the runner turns into the task's next step on a task
thread. One wake-up of this thread serves every answer that arrived meanwhile. A steps.Ask is a
deadline first: at its time this thread sends its request (a few bytes, not blocking) and the same
wait goes on for the answer, so no task thread wakes in between.

Parking costs the parking thread one epoll_ctl (the socket is armed EPOLLONESHOT, so a wake-up
never repeats; stepping.py makes it out of the runner's lock: `enter`, then `arm`) and no wake-up
of this loop unless the new deadline is earlier than the one it sleeps towards. Each wait ends
exactly once: whoever takes its entry out of the tables, under the lock, ends it."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import select
import threading
import time
from typing import Any, Callable

from utilitarian.steps import Ask, Readable, Until, Writable

log = logging.getLogger(__name__)

# What a socket wait arms its descriptor for. EPOLLERR and EPOLLHUP come unasked: a refused connect
# or a reset line ends its wait too (the task's next recv or SO_ERROR says what happened).
_ARMS = {Readable: select.EPOLLIN | select.EPOLLONESHOT, Writable: select.EPOLLOUT | select.EPOLLONESHOT,
         Ask: select.EPOLLIN | select.EPOLLONESHOT}

# After a turn that resumed fewer than GATHER_WAITS tasks, while at least GATHER_WAITS sockets are
# still parked, the loop lets GATHER_SECONDS pass before it looks again, so the answers that arrive
# meanwhile end in one wake-up of this thread (and of a step thread) instead of one each. A wake-up
# is what a wait costs most (on a VM, waking an idle CPU costs tens of microseconds of the woken
# process's CPU); a few ms on an answer that took tens of ms is the price, as the commit outbox pays
# it for its groups. A loop that found several answers at once is busy enough to gather by itself
# (pausing it then cost the Modbus round ~8 % more CPU); a deadline is never passed for the pause
# (it ends at the earliest one, and a new earlier one cuts it short); a lone wait is resumed at once.
GATHER_SECONDS = 0.004
GATHER_WAITS = 4


class _Entry:
    __slots__ = ("token", "fd", "deadline", "done", "ask", "arm", "wake")

    def __init__(self, token: Any, fd: int, deadline: float, ask: Ask | None = None, arm: int = 0):
        self.token = token
        self.fd = fd  # -1: not a socket wait (or not yet: an Ask before its request is sent)
        self.deadline = deadline  # an Ask's time to send, until it is sent
        self.done = False
        self.ask = ask  # an Ask whose request this loop sends at `deadline`
        self.arm = arm  # the epoll events `arm` sets for `fd`
        self.wake = False  # `arm` wakes the loop: this deadline is earlier than the one it sleeps towards


class WaitLoop:
    def __init__(self, resume: Callable[[Any, bool], None], *, clock: Callable[[], float] = time.monotonic,
                 name: str = "waits", gather: float = GATHER_SECONDS):
        self._resume = resume
        self.clock = clock
        self.name = name
        self.gather = gather
        self._lock = threading.Lock()
        self._by_fd: dict[int, _Entry] = {}
        self._by_token: dict[Any, _Entry] = {}
        self._deadlines: list[tuple[float, int, _Entry]] = []  # a heap; ended entries leave it lazily
        self._seq = itertools.count()
        self._sleeping_until = -math.inf  # the loop's next deadline while it sleeps (-inf: awake)
        self._epoll: select.epoll | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """In the process that uses it (after fork): an epoll is not shared with a parent."""
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._pause = select.poll()  # the gathering pause: only a wake-up through the pipe ends it early
        self._pause.register(self._wake_r, select.POLLIN)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def parked(self) -> int:
        with self._lock:
            return len(self._by_token)

    # --- any thread --------------------------------------------------------------------------
    def park(self, token: Any, wait) -> bool | None:
        """Park `token` on `wait` (steps.Readable, steps.Writable, steps.Ask or steps.Until): None
        when parked (`resume` follows from another thread), else the wait's value now (its deadline
        passed, its event completed already, or an Ask's request did not all go out): the caller
        goes on with it. `enter` and then `arm`."""
        entry = self.enter(token, wait)
        if type(entry) is _Entry:
            self.arm(entry)
            return None
        return entry

    def enter(self, token: Any, wait) -> _Entry | bool | None:
        """`park`'s first half, no system call: the wait in the tables. True or False: the wait's
        value now (not parked); None: parked, nothing left to do; an entry: parked, and the caller
        passes it to `arm` next, out of its own locks (a system call there releases the GIL, and
        a lock held across it makes every thread that wants the lock wait for that hand-over too)."""
        kind = type(wait)
        arm = _ARMS.get(kind)
        if arm is None and kind is not Until:
            raise TypeError(f"a stepwise task yielded {wait!r}, not a wait (steps.Readable, steps.Writable, "
                            "steps.Ask, steps.Until)")
        deadline = wait.deadline
        now = self.clock()
        if deadline <= now:
            return False
        ask = None
        if kind is Ask:
            if wait.at > now:
                ask = wait  # this loop sends it when its time comes
            elif not wait.send_now():  # due already: sent by the caller, who owns the task still
                return False
        if ask is not None:
            entry = _Entry(token, -1, ask.at, ask)
        elif arm is not None:
            entry = _Entry(token, wait.fd, deadline, None, arm)
        else:
            entry = _Entry(token, -1, deadline)
        with self._lock:
            if token in self._by_token:
                raise RuntimeError(f"{token!r} is parked already")
            self._by_token[token] = entry
            if entry.fd >= 0:
                self._by_fd[entry.fd] = entry
            heapq.heappush(self._deadlines, (entry.deadline, next(self._seq), entry))
            if entry.deadline < self._sleeping_until:
                self._sleeping_until = -math.inf
                entry.wake = True
        if kind is Until and not wait.event.subscribe(lambda: self._end(entry, True)):
            taken = self._take(entry) is not None
            if entry.wake:  # the loop was marked awake above: it must be, or later deadlines wait
                os.write(self._wake_w, b"x")
            # Not taken: a cancel took it meanwhile (it resumes nobody): the caller must not step on.
            return True if taken else None  # True: completed before we subscribed
        return entry if entry.arm or entry.wake else None

    def arm(self, entry: _Entry) -> None:
        """`park`'s second half: arm the socket and wake the loop if `enter` said so. The socket
        is armed under this loop's lock and only while the wait goes on: once it ended (resumed,
        cancelled) its task may have closed the socket and the descriptor be another's already."""
        if entry.arm:
            with self._lock:
                if not entry.done:
                    self._arm(entry.fd, entry.arm)
        if entry.wake:
            os.write(self._wake_w, b"x")

    def _arm(self, fd: int, events: int) -> None:
        try:
            self._epoll.modify(fd, events)  # armed before, by an earlier wait on this socket
        except FileNotFoundError:
            self._epoll.register(fd, events)

    def cancel(self, token: Any) -> bool:
        """End `token`'s wait without resuming it; True when it was parked (the caller now owns
        the task again), False when its wait had ended already (its resumption is on its way)."""
        with self._lock:
            entry = self._by_token.get(token)
            if entry is None:
                return False
            self._forget(entry)
        return True

    def _take(self, entry: _Entry) -> Any:
        """The entry's token if this call ended it, else None."""
        with self._lock:
            if entry.done:
                return None
            return self._forget(entry)

    def _forget(self, entry: _Entry) -> Any:
        # Under the lock; returns the token. A socket stays armed (a stray wake-up finds no entry
        # and is dropped, EPOLLONESHOT disarms it); closing it removes it from the epoll.
        token, entry.token = entry.token, None  # the heap keeps ended entries a while: not their tasks
        entry.done = True
        del self._by_token[token]
        if entry.fd >= 0 and self._by_fd.get(entry.fd) is entry:
            del self._by_fd[entry.fd]
        return token

    def _send(self, entry: _Entry) -> bool:
        """Under the lock, so a cancel cannot hand the task back (and its socket be closed, its
        descriptor reused) meanwhile: an Ask's request is due. True when it all went out and the
        entry waits for the answer now; False ends the wait (the task sends the rest itself)."""
        ask, entry.ask = entry.ask, None
        if not ask.send_now():
            return False
        entry.fd, entry.deadline = ask.fd, ask.deadline
        self._by_fd[ask.fd] = entry
        heapq.heappush(self._deadlines, (ask.deadline, next(self._seq), entry))
        self._arm(ask.fd, _ARMS[Ask])
        return True

    def _end(self, entry: _Entry, value: bool) -> None:
        token = self._take(entry)
        if token is not None:
            self._resume(token, value)

    # --- the loop's thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if not self._turn():
                    return
            except Exception:
                log.exception("wait loop failed; going on in 0.1s (parked tasks still end at their deadlines)")
                time.sleep(0.1)

    def _turn(self) -> bool:
        now = self.clock()
        expired: list = []
        with self._lock:
            if self._stopping:
                return False
            heap = self._deadlines
            while heap and (heap[0][2].done or heap[0][0] <= now):
                entry = heapq.heappop(heap)[2]
                if not entry.done and not (entry.ask is not None and self._send(entry)):
                    expired.append(self._forget(entry))
            if len(heap) > 1024 and len(heap) > 4 * len(self._by_token):
                # Ended waits (most of them: answers come long before their deadlines) are
                # dropped lazily; compact before they are most of what the heap holds.
                self._deadlines = heap = [item for item in heap if not item[2].done]
                heapq.heapify(heap)
            until = heap[0][0] if heap and not expired else math.inf
            self._sleeping_until = until
        for token in expired:
            self._resume(token, False)
        if expired:
            return True
        timeout = -1 if until == math.inf else max(0.0, until - self.clock())
        events = self._epoll.poll(timeout)
        ready: list = []
        with self._lock:
            self._sleeping_until = -math.inf
            for fd, _ in events:
                entry = self._by_fd.get(fd)
                if entry is not None:
                    ready.append(self._forget(entry))
                elif fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
        for token in ready:
            self._resume(token, True)
        if 0 < len(ready) < GATHER_WAITS and self.gather > 0:
            self._gather()
        return True

    def _gather(self) -> None:
        """Pause before the next look at the sockets while enough of them wait (GATHER_SECONDS)."""
        with self._lock:
            if len(self._by_fd) < GATHER_WAITS:
                return
            heap = self._deadlines
            until = min(heap[0][0] if heap else math.inf, self.clock() + self.gather)
            self._sleeping_until = until  # an earlier deadline entered meanwhile writes the pipe
        pause = until - self.clock()
        if pause > 0:
            self._pause.poll(pause * 1000.0)  # the pipe is drained by the next turn's epoll
        with self._lock:
            self._sleeping_until = -math.inf

    def stop(self) -> None:
        """Stop the loop; waits still parked never resume (the child is exiting)."""
        with self._lock:
            self._stopping = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(2.0)
