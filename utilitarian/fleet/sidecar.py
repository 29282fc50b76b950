"""The master's side of its control agent (fleet/agent.py): fork it, notice its exit by its
sentinel, respawn it with a capped backoff, stop it with the master. The master itself never
touches the broker; a broker outage costs the agent its connection, never the master its loop."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal

log = logging.getLogger(__name__)
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 30.0
HEALTHY_AFTER = 60.0  # an agent that lived this long resets the backoff


def respawn_delay(failures: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, failures - 1))


class AgentSidecar:
    def __init__(self, target, args: tuple, *, name: str = "control-agent"):
        self.target = target  # called in the forked process as target(*args, close_fds)
        self.args = args
        self.name = name
        self.ctx = multiprocessing.get_context("fork")
        self.process = None
        self.started = 0.0
        self.failures = 0
        self.next_start = float("-inf")  # monotonic; the loop wakes for it

    def fds(self) -> list[int]:
        return [self.process.sentinel] if self.process is not None else []

    def check(self, now: float, close_fds: list[int]) -> None:
        """One look per turn of the master's loop: reap a dead agent, start one when due."""
        if self.process is not None and self.process.exitcode is None and self.process.is_alive():
            return
        if self.process is not None:
            self.process.join(0)
            code = self.process.exitcode
            self.process = None
            self.failures = 1 if now - self.started >= HEALTHY_AFTER else self.failures + 1
            self.next_start = now + respawn_delay(self.failures)
            log.warning("control agent exited (%s); restarting it in %.0fs (`status --all` does not see this "
                        "worker meanwhile)", code, self.next_start - now)
        if now < self.next_start:
            return
        process = self.ctx.Process(target=self.target, args=(*self.args, list(close_fds)), name=self.name,
                                   daemon=False)
        try:
            process.start()
        except OSError as exc:
            self.failures += 1
            self.next_start = now + respawn_delay(self.failures)
            log.error("cannot fork the control agent: %s", exc)
            return
        self.process, self.started, self.next_start = process, now, float("inf")

    def stop(self, timeout: float = 3.0) -> None:
        process, self.process = self.process, None
        if process is None or not process.is_alive():
            return
        os.kill(process.pid, signal.SIGTERM)
        process.join(timeout)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            process.join(1.0)
