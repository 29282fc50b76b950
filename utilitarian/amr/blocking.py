"""One session at a time on a NetworkInterface with can_block, across every worker on every host:
a lease row in the store, taken atomically, released after the session, expired if its holder dies.

A job that finds the interface busy polls for a short while and then gives its thread back
(`InterfaceBusy`, which the task turns into a Defer); nobody sleeps for long holding a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
from typing import Callable, Iterator

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
    return f"{socket.gethostname()}:{os.getpid()}:{job_id}"


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


@contextlib.contextmanager
def interface_lock(store, interface_id: int, interface_name: str, job_id: str, *, lease: float,
                   wait: float, clock: Callable[[], float] = time.time,
                   sleep: Callable[[float], None] = time.sleep,
                   monotonic: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """Hold the interface for the body of the `with`; raises InterfaceBusy after `wait` seconds."""
    holder = holder_name(job_id)
    deadline = monotonic() + wait
    delay = POLL_INTERVAL
    while True:
        if store.acquire_block(interface_id, holder, lease=lease, now=clock()):
            break
        current = store.block_holder(interface_id)
        if current is not None and _holder_is_dead(current[0]):
            if store.take_over_block(interface_id, current[0], holder, lease=lease, now=clock()):
                log.warning("interface %s was held by %s, a process that no longer exists; block taken over",
                            interface_name, current[0])
                break
            continue
        if monotonic() >= deadline:
            raise InterfaceBusy(interface_name, current[0] if current else None)
        sleep(min(delay * random.uniform(0.8, 1.2), max(0.0, deadline - monotonic()) + 0.001))
        delay = min(delay * 2, POLL_MAX)
    try:
        yield holder
    finally:
        try:
            if not store.release_block(interface_id, holder):
                log.warning("interface %s: our block had expired and was taken by another job before "
                            "we finished (raise [amr] interface_block_lease)", interface_name)
        except Exception:  # the lease expires on its own; the job's outcome must not depend on this
            log.warning("interface %s: releasing the block failed; it expires with its lease",
                        interface_name, exc_info=True)
