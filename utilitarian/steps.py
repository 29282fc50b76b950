"""Stepwise tasks: a task written as a generator function yields what it waits for (a readable
socket, a completion from another thread) instead of blocking a thread on it, so a worker child
keeps many such tasks in flight on a few threads (supervisor/waits.py parks them, one epoll for
all). `drive` runs the same generator to its end in the calling thread, blocking at each wait: the
one way a stepwise task runs outside the worker (tests, scripts, `utilitarian read`), so no
protocol code exists twice (sans-IO: the generator does the work, its driver does the waiting).

A wait's resumption value is True when what it waited for happened, False when its deadline
(time.monotonic) passed first."""

from __future__ import annotations

import functools
import inspect
import select
import socket
import time
from typing import Any, Callable, Generator

Steps = Generator[Any, Any, Any]


class Readable:
    """Wait until file descriptor `fd` is readable or `deadline` passes."""

    __slots__ = ("fd", "deadline")

    def __init__(self, fd: int, deadline: float):
        self.fd = fd
        self.deadline = deadline


class Writable:
    """Wait until file descriptor `fd` is writable or `deadline` passes: a non-blocking connect
    that has completed or failed (the caller reads SO_ERROR to tell which)."""

    __slots__ = ("fd", "deadline")

    def __init__(self, fd: int, deadline: float):
        self.fd = fd
        self.deadline = deadline


class Ask:
    """Send `data` on socket `sock` at `at` (time.monotonic), then wait until it is readable or
    `deadline` passes: a request a protocol's reaction time holds back (IEC 62056-21's option
    select), sent by whoever does the waiting, so no task thread wakes only to send it.

    `sent` is how much of `data` went out. The send does not block: a line that takes less (or
    fails) ends the wait at once, False, and the task sends the rest itself (where a failure
    raises as any send's would). True: all sent, and the socket is readable."""

    __slots__ = ("sock", "fd", "data", "at", "deadline", "sent")

    def __init__(self, sock, data: bytes, at: float, deadline: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.data = data
        self.at = at
        self.deadline = deadline
        self.sent = 0

    def send_now(self) -> bool:
        """Send the request without blocking; True when all of it went out."""
        try:
            self.sent = self.sock.send(self.data, _SEND_NOWAIT)
        except OSError:
            self.sent = 0
        return self.sent == len(self.data)


class Until:
    """Wait until `event` completes or `deadline` passes. `event` offers `wait(timeout) -> bool`
    (block this thread) and `subscribe(callback) -> bool` (call `callback()` once, from the thread
    that completes it; False when it is complete already and no call will come)."""

    __slots__ = ("event", "deadline")

    def __init__(self, event, deadline: float):
        self.event = event
        self.deadline = deadline


class _Never:
    """An event that never completes: a wait on it ends at its deadline."""

    def wait(self, timeout: float) -> bool:
        if timeout > 0:
            time.sleep(timeout)
        return False

    def subscribe(self, callback) -> bool:
        return True  # parked until the deadline; nobody ever calls `callback`


NEVER = _Never()


def pause(seconds: float) -> Until:
    """A wait that only its deadline ends (a protocol's reaction time): `yield steps.pause(0.02)`;
    parked like any other wait in the worker, slept in `drive`."""
    return Until(NEVER, time.monotonic() + seconds)


def block(wait) -> bool:
    """Wait in this thread; the resumption value."""
    if isinstance(wait, Until):
        return wait.event.wait(max(wait.deadline - time.monotonic(), 0.0))
    if type(wait) is Ask:
        early = wait.at - time.monotonic()
        if early > 0:
            time.sleep(early)
        if wait.deadline <= time.monotonic() or not wait.send_now():
            return False
    events = _POLL_EVENTS.get(type(wait))
    if events is None:
        raise TypeError(f"a stepwise task yielded {wait!r}, not a wait (steps.Readable, steps.Writable, "
                        "steps.Ask, steps.Until)")
    left = wait.deadline - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(wait.fd, events)
    # Rounded up: a poll woken a hair before the deadline would only come back to wait again.
    # An error or hang-up on the descriptor ends the wait too (poll reports them unasked).
    return bool(poller.poll(int(left * 1000) + 1))


_POLL_EVENTS = {Readable: select.POLLIN, Writable: select.POLLOUT, Ask: select.POLLIN}
_SEND_NOWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def drive(steps: Steps) -> Any:
    """Run a stepwise task's generator to its end in this thread; its return value."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            wait = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = block(wait), None
        except BaseException as exc:  # KeyboardInterrupt in a wait: the task's finally blocks run
            error = exc


def stepwise(genfunc: Callable[..., Steps]) -> Callable[..., Any]:
    """The generator function as a plain function (driven by `drive`) that keeps the generator
    function as `.steps`, for a caller that parks its waits instead."""
    @functools.wraps(genfunc)
    def run(*args, **kwargs):
        return drive(genfunc(*args, **kwargs))

    run.steps = genfunc  # type: ignore[attr-defined]
    return run


def is_steps_function(func: Callable) -> bool:
    return inspect.isgeneratorfunction(func)
