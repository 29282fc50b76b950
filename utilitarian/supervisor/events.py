"""What flows into the supervision rules (events the master's loop observed) and out of them
(actions the loop carries out): plain frozen values, so (now, events) -> actions is a table test."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from utilitarian.supervisor.plan import PoolSpec, WorkerPlan


# --- events: what the loop saw --------------------------------------------------------------
@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class Report:
    """One JSON document a child wrote on its status pipe ("hb", "ready", "consuming", "retire",
    "boot_failed"); any document proves the child is alive."""

    cid: int
    doc: dict


@dataclass(frozen=True)
class Exited:
    """A child was reaped; `code` as multiprocessing gives it (negative: killed by that signal)."""

    cid: int
    code: int | None


@dataclass(frozen=True)
class MemoryMeasured:
    cid: int
    rss: int  # bytes


@dataclass(frozen=True)
class Reloaded:
    """The loop re-read the TOML file after a LoadConfig action."""

    plan: WorkerPlan
    worker: Any  # config.worker (crash loop and backoff tunables)


@dataclass(frozen=True)
class ControlCommand:
    """An operator's change (`utilitarian control`), checked by supervisor/commands.py before it
    was accepted: "grow"/"shrink" `pool` by `n` processes, "drain"/"resume" `queue`."""

    cmd: str
    pool: str | None = None
    queue: str | None = None
    n: int = 0


@dataclass(frozen=True)
class ReloadFailed:
    reason: str


# --- actions: what the loop does ------------------------------------------------------------
@dataclass(frozen=True)
class Spawn:
    """Fork a child for `pool`; report its pid with `Supervisor.started(cid, pid)`."""

    cid: int
    pool: PoolSpec
    index: int
    generation: int
    boot_may_fail: bool  # False once any child was ready: the child retries refusals in place


@dataclass(frozen=True)
class Kill:
    cid: int
    signum: int


@dataclass(frozen=True)
class Notify:
    """sd_notify: kind is "ready", "status", "watchdog", "stopping" or "reloading"."""

    kind: str
    text: str | None = None


@dataclass(frozen=True)
class Log:
    level: int
    msg: str
    args: tuple = field(default=())

    def render(self) -> str:
        return self.msg % self.args if self.args else self.msg


@dataclass(frozen=True)
class MeasureMemory:
    """Read the RSS of these children; answer with MemoryMeasured events."""

    cids: tuple[int, ...]


@dataclass(frozen=True)
class LoadConfig:
    """Re-read the configuration (SIGHUP); answer with Reloaded or ReloadFailed."""


@dataclass(frozen=True)
class Exit:
    """Every child is gone after a stop: the master returns `code`."""

    code: int


def log(level: int, msg: str, *args) -> Log:
    return Log(level, msg, args)


INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
