"""Asynchronous exceptions (PyThreadState_SetAsyncExc) delivered safely: only to the thread still
running the job they are meant for, decided under the lock the job's end also takes, and never
inside a shielded critical section (a lock, a transaction): there they are deferred, and leaving
the outermost shield raises them.

An async exception lands wherever its thread is when the interpreter next checks for pending
work: after the job returned, inside a lock, between `BEGIN` and `try`. So:
- `ThreadGuard.begin(token)` / `end()` bracket one job on its thread; `raise_in(token, exc)` from
  another thread injects only while that same job runs (`end()` also cancels one not yet raised).
- `shielded()` marks a critical section; an injection while shielded is recorded and raised
  synchronously by the outermost shield's exit, once the section is closed.
An exception injected just before the thread entered a shield, but not raised yet, is taken back
at the shield's entry and deferred too (the classes we inject mark their instances when raised,
which tells "pending" from "already delivered"). On CPython 3.11 that is a safety net only: a
pending exception surfaces at the next function entry, i.e. before the shield is up.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Iterator

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
# The same function with a NULL exception: clears what is pending for the thread.
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))

_local = threading.local()
_injectable: dict[type, type] = {}
_injectable_lock = threading.Lock()


class ThreadGuard:
    """Per-thread state: the job now running (token), shield depth, what was injected or deferred.
    Every field is changed under `lock`, except `raised`, set by the exception itself when it
    surfaces (a plain store, safe in any context)."""

    def __init__(self, ident: int):
        self.ident = ident
        self.lock = threading.Lock()
        self.token: object | None = None
        self.depth = 0
        self.injected: type | None = None  # handed to the interpreter, maybe not raised yet
        self.raised = False
        self.deferred: type | None = None  # to raise when the outermost shield is left

    # --- the thread itself ---------------------------------------------------------------------
    def begin(self, token: object) -> None:
        with self.lock:
            self.token = token
            self.injected = None
            self.raised = False
            self.deferred = None

    def end(self) -> type | None:
        """The job is over: nothing meant for it may arrive from now on. Returns the class of an
        exception meant for it that did not surface (taken back, or deferred by a shield): a
        stepwise task's step ends by parking, and the task still has to get it."""
        with self.lock:
            self.token = None
            deferred, self.deferred = self.deferred, None
            return self._take_back_pending() or deferred

    def _take_back_pending(self) -> type | None:
        """Under `lock`, on this guard's own thread: cancel an injection not raised yet and
        return its class (None if there was none, or it surfaced already)."""
        injected, self.injected = self.injected, None
        if injected is None or self.raised:
            return None
        # If it surfaces before this call, it does so here, outside any shield (fine). After the
        # call nothing is pending, and no injector can add one while we hold the lock.
        _clear_async_exc(self.ident, None)
        return injected

    # --- other threads -------------------------------------------------------------------------
    def raise_in(self, token: object, exc_type: type[BaseException]) -> str:
        """Inject `exc_type` if the job `token` still runs: "raised", "deferred" (its thread is in
        a critical section: the exception comes when it leaves), or "gone" (the job is over)."""
        marked = injectable(exc_type)
        with self.lock:
            if self.token is not token or token is None:
                return "gone"
            if self.depth > 0:
                self.deferred = self.deferred or marked
                return "deferred"
            if self.injected is not None:
                return "raised"  # one is on its way already
            self.injected = marked
            self.raised = False
            _set_async_exc(self.ident, marked)
            return "raised"


def guard() -> ThreadGuard:
    """This thread's guard (created on first use)."""
    g = getattr(_local, "guard", None)
    if g is None:
        g = _local.guard = ThreadGuard(threading.get_ident())
    return g


def injectable(exc_type: type[BaseException]) -> type[BaseException]:
    """A subclass of `exc_type` with the same name whose instances tell their thread's guard that
    the injection surfaced. Callers still catch `exc_type`."""
    cls = _injectable.get(exc_type)
    if cls is not None:
        return cls
    with _injectable_lock:
        cls = _injectable.get(exc_type)
        if cls is None:
            def __init__(self, *args):
                g = getattr(_local, "guard", None)
                if g is not None:
                    g.raised = True
                exc_type.__init__(self, *args)

            cls = type(exc_type.__name__, (exc_type,), {"__init__": __init__, "__module__": exc_type.__module__,
                                                      "__qualname__": exc_type.__qualname__})
            _injectable[exc_type] = cls
    return cls


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A critical section no injected exception interrupts; one that arrives meanwhile is raised
    when the outermost shield is left (after the section closed its lock or transaction)."""
    g = guard()
    with g.lock:
        if g.depth == 0:
            taken = g._take_back_pending()
            if taken is not None:
                g.deferred = g.deferred or taken
        g.depth += 1
    try:
        yield
    finally:
        with g.lock:
            g.depth -= 1
            deferred = None
            if g.depth == 0:
                deferred, g.deferred = g.deferred, None
        if deferred is not None:
            raise deferred()


def shield_depth() -> int:
    return guard().depth
