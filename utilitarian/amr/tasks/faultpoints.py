"""Named fault points at the step boundaries of the AMR pipeline, for the crash-and-fail harness
(tests/integration/amr_faults, which lists every call in the source and fails if one has no case).
A point costs one global lookup unless `UTILITARIAN_FAULTS` names a directory when the process
starts; then a file named after the point arms it: its text is `<kind> [<times>]`, kind one of

  publish   raise PublishError here, as if the next (or last) publish had failed
  store     raise StoreError here, as if the next (or last) store call had failed
  kill      SIGKILL this process here (a worker child dies mid-step)

Each firing claims a file `<point>.fired.<n>` (O_EXCL, before acting), so `times` counts across
all processes and respawned children, and the harness sees where and when each fault struck.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from utilitarian.amr.store.backend import StoreError
from utilitarian.errors import PublishError

ENV = "UTILITARIAN_FAULTS"
KINDS = ("publish", "store", "kill")
_DIR = os.environ.get(ENV) or None


class InjectedStoreError(StoreError):
    """A planted store failure (the name shows in logs and dead-letter headers)."""


class InjectedPublishError(PublishError):
    """A planted publish failure."""


def faultpoint(name: str) -> None:
    """A step boundary. Does nothing unless the harness armed `name`."""
    if _DIR is None:
        return
    _maybe_fire(_DIR, name)


def _maybe_fire(directory: str, name: str) -> None:
    try:
        with open(os.path.join(directory, name)) as fh:
            words = fh.read().split()
    except FileNotFoundError:
        return
    kind = words[0] if words else ""
    times = int(words[1]) if len(words) > 1 else 1
    for n in range(times):
        try:
            fd = os.open(os.path.join(directory, f"{name}.fired.{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        # Written before acting: a SIGKILL must leave its trace too.
        os.write(fd, json.dumps({"kind": kind, "pid": os.getpid(), "thread": threading.current_thread().name,
                                 "at": time.time()}).encode())
        os.close(fd)
        _act(kind, name)
        return


def _act(kind: str, name: str) -> None:
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # not reached: SIGKILL cannot be caught
    if kind == "store":
        raise InjectedStoreError(f"injected store error at {name}")
    if kind == "publish":
        raise InjectedPublishError(f"injected publish failure at {name}")
    raise ValueError(f"fault point {name}: unknown fault kind {kind!r} (known: {', '.join(KINDS)})")
