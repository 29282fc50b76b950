"""Drive a stepwise task (utilitarian/steps.py) as a worker child does: every wait it yields is
parked in a real wait loop (supervisor/waits.py, one epoll), and its next step runs on this thread
when the loop resumes it. The counterpart of steps.drive for tests."""

from __future__ import annotations

import queue

from utilitarian.steps import Steps
from utilitarian.supervisor.waits import WaitLoop


def run_parked(gen: Steps, *, waits: list | None = None, timeout: float = 30.0):
    """The generator's return value (or its exception); `waits` collects what it yielded."""
    resumed: queue.SimpleQueue = queue.SimpleQueue()
    loop = WaitLoop(lambda token, value: resumed.put(value), name="test-waits")
    loop.start()
    try:
        value = None
        while True:
            try:
                wait = gen.send(value)
            except StopIteration as stop:
                return stop.value
            if waits is not None:
                waits.append(wait)
            value = loop.park("task", wait)
            if value is None:
                value = resumed.get(timeout=timeout)
    finally:
        gen.close()
        loop.stop()
