"""Heartbeat murder (SIGABRT, then SIGKILL), stop modes and their deadlines, exit-when-idle, and
what systemd is told (READY once, STATUS, WATCHDOG only while healthy), with an injected clock."""

from __future__ import annotations

import signal

import pytest

from utilitarian.errors import EX_OK
from utilitarian.supervisor.plan import PoolSpec


def test_a_silent_child_gets_sigabrt_then_sigkill_and_is_replaced(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 2), heartbeat=10.0))
    (a,) = s.boot()
    s.step(5.0, s.hb(a, consuming=True))
    assert s.kills(s.step(15.0)) == []  # 10 s since the last report: not yet over
    out = s.step(15.01)
    assert s.kills(out) == [(a, signal.SIGABRT)] and s.state(a) == "aborted"
    assert "heartbeat timeout 10.0s); SIGABRT dumps its stacks" in s.logs(out)
    (b,) = [x.cid for x in s.spawns(out)]  # out of capacity: its replacement starts now
    assert s.sup.children[b].replaces == "heartbeat" and s.sup.children[a].replaces is None
    assert s.kills(s.step(20.0, s.ready(b))) == []
    assert s.kills(s.step(20.01)) == [(a, signal.SIGKILL)]
    assert s.kills(s.step(24.0, s.hb(b))) == []
    assert s.kills(s.step(25.02)) == [(a, signal.SIGKILL)]  # resent until reaped
    s.step(25.5, s.exited(a, -signal.SIGKILL))
    assert s.sup.restarts == {"heartbeat": 1} and s.live() == [b]


def test_any_report_counts_as_a_heartbeat(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 2), heartbeat=10.0))
    (a,) = s.boot()
    for t in range(5, 60, 5):
        assert s.kills(s.step(float(t), s.hb(a))) == []


@pytest.mark.parametrize("mode,signals,deadline", [
    ("SIGTERM", [signal.SIGTERM], 31.0),  # graceful: graceful_timeout + 1 s
    ("SIGINT", [signal.SIGINT], 31.0),
    ("SIGQUIT", [signal.SIGQUIT], 5.0),  # quick
    ("2xSIGINT", [signal.SIGINT, signal.SIGINT], 5.0),
])
def test_stop_modes_signal_the_children_then_kill_at_the_deadline(sim, mode, signals, deadline):
    s = sim(sim.make_plan(heartbeat=1000.0))
    a, b = s.boot()
    out = s.step(100.0, *(s.sig(x) for x in signals))
    sent = signal.SIGTERM if deadline > 5.0 else signal.SIGQUIT
    assert {k for k in s.kills(out) if k[1] == sent} == {(a, sent), (b, sent)}
    assert s.notes(out, "stopping") and s.state(a) == "stopping"
    out = s.step(100.0 + deadline - 0.01, s.exited(a, 0))
    assert s.kills(out, signal.SIGKILL) == [] and s.spawns(out) == []
    out = s.step(100.0 + deadline)
    assert s.kills(out, signal.SIGKILL) == [(b, signal.SIGKILL)]
    out = s.step(100.0 + deadline + 1.0, s.exited(b, -signal.SIGKILL))
    assert s.exit_code(out) == EX_OK
    assert s.exit_code(s.step(200.0)) is None  # Exit is said once


def test_a_graceful_stop_becomes_quick_on_sigquit(sim):
    s = sim()
    a, b = s.boot()
    s.step(1.0, s.sig(signal.SIGTERM))
    out = s.step(2.0, s.sig(signal.SIGQUIT))
    assert sorted(s.kills(out)) == [(a, signal.SIGQUIT), (b, signal.SIGQUIT)]
    assert s.sup.stop == "quick" and s.sup.stop_deadline == pytest.approx(7.0)


IDLE = [  # heartbeat fields of both children -> exits when idle?
    (dict(consuming=True, inflight=0, idle=3.0), True),
    (dict(consuming=True, inflight=0, idle=1.9), False),
    (dict(consuming=True, inflight=1, idle=3.0), False),
    (dict(consuming=False, inflight=0, idle=3.0, why="connection lost"), False),
    (dict(consuming=True, inflight=0, idle=3.0, pending_later=True), False),  # work held for later
]


@pytest.mark.parametrize("fields,exits", IDLE)
def test_exit_when_idle(sim, fields, exits):
    s = sim(sim.make_plan(idle=2.0))
    a, b = s.boot()
    out = s.step(5.0, s.hb(a, consuming=True, inflight=0, idle=10.0), s.hb(b, **fields))
    assert (s.sup.stop == "graceful") is exits
    if exits:
        assert "exiting when idle" in s.logs(out)
        out = s.step(6.0, s.exited(a, 0), s.exited(b, 0))
        assert s.exit_code(out) == EX_OK


def test_exit_when_idle_waits_for_children_that_are_not_ready(sim):
    s = sim(sim.make_plan(idle=2.0))
    s.step(0.0)
    a, b = s.live()
    s.step(1.0, s.ready(a), s.hb(a, consuming=True, idle=5.0), s.hb(b, consuming=False, idle=5.0))
    assert s.sup.stop is None


def test_notify_ready_once_status_each_second_watchdog_only_while_healthy(sim):
    s = sim(sim.make_plan(heartbeat=10.0), notify=True, watchdog=2.0)
    s.step(0.0)
    a, b = s.live()
    out = s.step(0.5, s.ready(a))
    assert s.notes(out, "ready") == []
    out = s.step(0.6, s.ready(b))
    assert len(s.notes(out, "ready")) == 1 and "2/2 children" in s.notes(out, "ready")[0].text
    watchdogs = []
    for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0):
        out = s.step(t, s.hb(a, consuming=True), *([s.hb(b, consuming=True)] if t < 2.0 else []))
        assert s.notes(out, "ready") == []
        assert len(s.notes(out, "status")) == 1
        if s.notes(out, "watchdog"):
            watchdogs.append(t)
    assert watchdogs[:3] == [2.0, 4.0, 6.0]  # every 2 s ...
    assert max(watchdogs) <= 11.0  # ... until b is silent past its heartbeat timeout


def test_without_systemd_nothing_is_notified(sim):
    s = sim(notify=False, watchdog=None)
    s.boot()
    assert s.notes(s.step(5.0), "status") == [] and s.notes(s.actions, "ready") == []
