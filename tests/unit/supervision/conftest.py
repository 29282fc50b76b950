"""A harness for the supervision rules: a Supervisor with an injected clock, fed events by hand,
whose actions are recorded and looked at by kind. Nothing forks, nothing sleeps."""

from __future__ import annotations

import dataclasses

import pytest

from utilitarian.config import WorkerConfig
from utilitarian.supervisor import events as ev
from utilitarian.supervisor.plan import PoolSpec, WorkerPlan
from utilitarian.supervisor.supervision import Supervisor


def make_plan(*pools: PoolSpec, graceful: float = 30.0, heartbeat: float = 30.0, idle: float | None = None):
    pools = pools or (PoolSpec("main", ("utilitarian.tasks.default",), processes=2, threads=4),)
    return WorkerPlan(name="w@test", profile=None, pools=tuple(pools), graceful_timeout=graceful,
                      exit_when_idle=idle, heartbeat_timeout=heartbeat, imports=())


class Sim:
    """Drives a Supervisor: `step(now, *events)` returns the actions; spawns get pids 1000+cid."""

    make_plan = staticmethod(make_plan)

    def __init__(self, plan=None, *, notify=False, watchdog=None, can_reload=True, **worker):
        self.plan = plan or make_plan()
        self.worker = dataclasses.replace(WorkerConfig(), **worker)
        self.sup = Supervisor(self.plan, self.worker, 0.0, notify=notify, watchdog_interval=watchdog,
                              can_reload=can_reload)
        self.actions: list = []

    def step(self, now: float, *events) -> list:
        out = self.sup.step(now, list(events))
        for action in out:
            if isinstance(action, ev.Spawn):
                self.sup.started_pid(action.cid, 1000 + action.cid)
        self.actions += out
        return out

    # --- events ---------------------------------------------------------------------------------
    @staticmethod
    def ready(cid: int, boot: float = 0.1) -> ev.Report:
        return ev.Report(cid, {"e": "ready", "boot": boot})

    @staticmethod
    def hb(cid: int, **fields) -> ev.Report:
        return ev.Report(cid, {"e": "hb", **fields})

    @staticmethod
    def done(cid: int, n: int, **fields) -> ev.Report:
        """A heartbeat saying the child finished n tasks."""
        return ev.Report(cid, {"e": "hb", "stats": {"c": [["q", "t", "done", n]], "h": []}, "consuming": True,
                               **fields})

    @staticmethod
    def exited(cid: int, code: int | None) -> ev.Exited:
        return ev.Exited(cid, code)

    @staticmethod
    def sig(signum: int) -> ev.SignalReceived:
        return ev.SignalReceived(signum)

    # --- looking at actions ---------------------------------------------------------------------
    def live(self) -> list[int]:
        return sorted(self.sup.children)

    def state(self, cid: int) -> str:
        return self.sup.children[cid].state.value

    @staticmethod
    def spawns(actions) -> list[ev.Spawn]:
        return [a for a in actions if isinstance(a, ev.Spawn)]

    @staticmethod
    def kills(actions, signum: int | None = None) -> list[tuple[int, int]]:
        return [(a.cid, a.signum) for a in actions if isinstance(a, ev.Kill) and (signum is None or a.signum == signum)]

    @staticmethod
    def exit_code(actions) -> int | None:
        codes = [a.code for a in actions if isinstance(a, ev.Exit)]
        return codes[0] if codes else None

    @staticmethod
    def notes(actions, kind: str) -> list[ev.Notify]:
        return [a for a in actions if isinstance(a, ev.Notify) and a.kind == kind]

    @staticmethod
    def logs(actions) -> str:
        return "\n".join(a.render() for a in actions if isinstance(a, ev.Log))

    def boot(self, now: float = 0.0) -> list[int]:
        """Spawn the pools and make every child ready; returns their ids."""
        self.step(now)
        cids = self.live()
        self.step(now, *(self.ready(c) for c in cids))
        return cids


@pytest.fixture
def sim():
    return Sim

