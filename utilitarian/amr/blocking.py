"""One session at a time on a NetworkInterface with can_block, across every worker on every host:
a lease row in the store, taken atomically, renewed while the session runs, released after it,
expired if its holder dies. Leases are judged by the database's clock, never a host's.

A job that finds the interface busy polls for a short while and then gives its thread back
(`InterfaceBusy`, which the task turns into a Defer); nobody sleeps for long holding a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import weakref
from typing import Callable, Iterator

from utilitarian import steps
from utilitarian.amr.metrics import BLOCK_WAITS

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05  # seconds between tries while waiting; doubles up to POLL_MAX
POLL_MAX = 0.25


class InterfaceBusy(Exception):
    """Another job holds the interface; `holder` says who (host:pid:job)."""

    def __init__(self, interface: str, holder: str | None):
        super().__init__(f"interface {interface} is busy (held by {holder or 'someone'})")
        self.interface = interface
        self.holder = holder


def holder_name(job_id: str) -> str:
    # The session token tells apart two deliveries of one job in one process (a job published
    # twice after a dispatch was redelivered): with the job id alone both would "hold" the block.
    return f"{socket.gethostname()}:{os.getpid()}:{job_id}:{random.getrandbits(32):08x}"


def _holder_is_dead(holder: str) -> bool:
    """True only when the holder ran on this host and its process is gone (pid reuse within one
    lease is the accepted risk); holders on other hosts are judged by their lease alone."""
    try:
        host, pid_text, _ = holder.split(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Held:
    """One block this process holds, as the renewer sees it."""

    def __init__(self, interface_id: int, name: str, holder: str, lease: float, due: float):
        self.interface_id = interface_id
        self.name = name
        self.holder = holder
        self.lease = lease
        self.due = due  # monotonic time of the next renewal
        self.released = False
        self.lost = False
        self.lock = threading.Lock()  # a renewal never overlaps the release


class BlockRenewer:
    """Renews the leases of the blocks held in this process, each every third of its lease, on one
    thread that exists only while something is held. A session longer than the lease (an LIS-200
    archive read, a slow bus) keeps its block; only a holder that stopped renewing (dead, or cut
    off from the database for a whole lease) loses it."""

    def __init__(self, store, *, monotonic: Callable[[], float] = time.monotonic):
        self.store = store
        self.monotonic = monotonic
        self._held: set[_Held] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def hold(self, interface_id: int, name: str, holder: str, lease: float) -> _Held:
        held = _Held(interface_id, name, holder, lease, self.monotonic() + lease / 3)
        with self._lock:
            if self._pid != os.getpid():  # inherited through fork: the parent's thread is not ours
                self._held, self._thread, self._pid = set(), None, os.getpid()
            self._held.add(held)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="block-renewer", daemon=True)
                self._thread.start()
        self._wake.set()
        return held

    def drop(self, held: _Held) -> None:
        with held.lock:  # waits for a renewal in progress, so it cannot land after the release
            held.released = True
        with self._lock:
            self._held.discard(held)
        self._wake.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                held = list(self._held)
            now = self.monotonic()
            for h in held:
                if h.due <= now:
                    self._renew(h, now)
            with self._lock:
                wait = min((h.due for h in self._held), default=now) - self.monotonic()
            self._wake.wait(max(0.01, min(wait, 60.0)))
            self._wake.clear()

    def _renew(self, h: _Held, now: float) -> None:
        with h.lock:
            if h.released:
                return
            try:
                kept = self.store.renew_block(h.interface_id, h.holder, lease=h.lease)
            except Exception as exc:  # try again soon; the lease still has two thirds to run
                h.due = now + min(1.0, h.lease / 10)
                log.warning("interface %s: renewing the block failed (%s); trying again", h.name, exc)
                return
            if kept:
                h.due = now + h.lease / 3
                return
            h.lost = True
        log.error("interface %s: our block was gone when we renewed it (its lease of %.0fs ran out: "
                  "the database was out of reach that long?); another job may now use the interface",
                  h.name, h.lease)
        with self._lock:
            self._held.discard(h)


_renewers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_renewers_lock = threading.Lock()


def renewer_for(store) -> BlockRenewer:
    """The process's renewer for `store` (built on first use)."""
    with _renewers_lock:
        renewer = _renewers.get(store)
        if renewer is None:
            renewer = _renewers[store] = BlockRenewer(store)
        return renewer


def take_interface(store, interface_id: int, interface_name: str, job_id: str, *, lease: float, wait: float,
                   monotonic: Callable[[], float] = time.monotonic,
                   pause: Callable[[float], object] = steps.pause) -> Iterator:
    """Take the interface's block for `job_id` (stepwise: `holder = yield from take_interface(...)`);
    raises InterfaceBusy after `wait` seconds. Between tries it yields `pause(seconds)`: in a
    worker the task is parked meanwhile, so a busy bus holds no step thread while the sessions of
    other meters wait for theirs. Expiry is judged by the database's clock."""
    holder = holder_name(job_id)
    deadline = monotonic() + wait
    delay = POLL_INTERVAL
    waiting = False  # counted in amr_interface_blocks_waiting while this job waits
    try:
        while True:
            if store.acquire_block(interface_id, holder, lease=lease):
                return holder
            current = store.block_holder(interface_id)
            if current is not None and _holder_is_dead(current[0]):
                if store.take_over_block(interface_id, current[0], holder, lease=lease):
                    log.warning("interface %s was held by %s, a process that no longer exists; block taken over",
                                interface_name, current[0])
                    return holder
                continue
            if monotonic() >= deadline:
                raise InterfaceBusy(interface_name, current[0] if current else None)
            if not waiting:
                waiting = True
                BLOCK_WAITS.inc()
            yield pause(min(delay * random.uniform(0.8, 1.2), max(0.0, deadline - monotonic()) + 0.001))
            delay = min(delay * 2, POLL_MAX)
    finally:
        if waiting:
            BLOCK_WAITS.dec()


@contextlib.contextmanager
def holding_interface(store, interface_id: int, interface_name: str, holder: str, *, lease: float,
                      renewer: BlockRenewer | None = None) -> Iterator[str]:
    """The body of the `with` runs holding the block `take_interface` took: its lease renewed
    meanwhile, released after it."""
    renewer = renewer or renewer_for(store)
    held = renewer.hold(interface_id, interface_name, holder, lease)
    try:
        yield holder
    finally:
        renewer.drop(held)
        try:
            if not store.release_block(interface_id, holder) and not held.lost:
                log.warning("interface %s: our block had expired and was taken by another job before "
                            "we finished", interface_name)
        except Exception:  # the lease expires on its own; the job's outcome must not depend on this
            log.warning("interface %s: releasing the block failed; it expires with its lease",
                        interface_name, exc_info=True)


@contextlib.contextmanager
def interface_lock(store, interface_id: int, interface_name: str, job_id: str, *, lease: float,
                   wait: float, sleep: Callable[[float], None] = time.sleep,
                   monotonic: Callable[[], float] = time.monotonic,
                   renewer: BlockRenewer | None = None) -> Iterator[str]:
    """The blocking form, for code that is not stepwise: waits for the block in this thread."""
    tries = take_interface(store, interface_id, interface_name, job_id, lease=lease, wait=wait,
                           monotonic=monotonic, pause=lambda seconds: seconds)
    try:
        while True:
            sleep(next(tries))
    except StopIteration as done:
        holder = done.value
    with holding_interface(store, interface_id, interface_name, holder, lease=lease, renewer=renewer):
        yield holder
