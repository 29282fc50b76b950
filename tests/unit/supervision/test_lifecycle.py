"""Boot, respawn and the exit codes of the whole worker, with an injected clock: spawning the
pools, boot_may_fail, a child that cannot boot before vs after any child was ready, respawn
backoff and its reset, and the crash-loop limit."""

from __future__ import annotations

import signal

import pytest

from utilitarian.errors import EX_CONFIG, EX_OK, EX_SOFTWARE
from utilitarian.supervisor.events import Report
from utilitarian.supervisor.plan import PoolSpec

KILLED = -signal.SIGKILL


def test_first_step_spawns_every_pool_and_nothing_more(sim):
    s = sim(sim.make_plan(PoolSpec("a", ("q1",), 2, 4), PoolSpec("b", ("q2",), 1, 2)))
    first = s.spawns(s.step(0.0))
    assert [(a.pool.name, a.index, a.boot_may_fail) for a in first] == [("a", 0, True), ("a", 1, True), ("b", 0, True)]
    assert s.spawns(s.step(1.0)) == []  # starting children count toward capacity
    assert all(s.state(c) == "starting" for c in s.live())


def test_ready_moves_to_running_and_later_spawns_may_not_fail_boot(sim):
    s = sim()
    a, b = s.boot()
    assert s.state(a) == s.state(b) == "running" and s.sup.ever_ready
    out = s.step(1.0, s.exited(a, KILLED))
    out += s.step(2.0)
    (respawn,) = s.spawns(out)
    assert respawn.boot_may_fail is False  # the child retries broker refusals in place
    assert s.sup.children[respawn.cid].replaces == "crash"


@pytest.mark.parametrize("code,boot_failed", [(EX_CONFIG, True), (EX_CONFIG, False), (1, True)])
def test_a_child_that_cannot_boot_before_any_was_ready_stops_the_worker_with_78(sim, code, boot_failed):
    s = sim()
    s.step(0.0)
    a, b = s.live()
    events = [s.exited(a, code)]
    if boot_failed:
        events.insert(0, ev_boot_failed(a))
    out = s.step(0.5, *events)
    assert s.kills(out) == [(b, signal.SIGQUIT)] and s.spawns(out) == []
    assert s.sup.stop == "quick"
    out = s.step(0.6, s.exited(b, 0))
    assert s.exit_code(out) == EX_CONFIG
    assert s.spawns(s.step(5.0)) == []


def ev_boot_failed(cid):
    return Report(cid, {"e": "boot_failed", "code": EX_CONFIG, "reason": "access to the vhost was refused"})


@pytest.mark.parametrize("who", ["the child that was ready", "a sibling still booting"])
def test_a_child_exiting_78_after_any_child_was_ready_is_a_crash(sim, who):
    s = sim()
    s.step(0.0)
    a, b = s.live()
    s.step(0.1, s.ready(a))
    victim = a if who == "the child that was ready" else b
    out = s.step(1.0, ev_boot_failed(victim), s.exited(victim, EX_CONFIG))
    assert s.sup.stop is None and s.exit_code(out) is None
    assert s.sup.restarts["crash"] == 1
    assert "transient broker refusal" in s.logs(out)
    assert [a.boot_may_fail for a in s.spawns(s.step(1.2))] == [False]


# consecutive crashes of a pool -> delay before its next spawn (base 0.1 s, doubled, capped)
BACKOFF = [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 3.2), (7, 4.0), (8, 4.0)]


@pytest.mark.parametrize("crashes,delay", BACKOFF)
def test_respawn_backoff(sim, crashes, delay):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 1)), restart_backoff_max=4.0, crash_loop_limit=100)
    s.boot()
    now = 10.0
    for i in range(crashes):
        (cid,) = s.live()
        s.step(now, s.exited(cid, KILLED))
        wait = s.sup.wake_by(now)
        assert s.spawns(s.step(now + wait - 0.001)) == []
        assert len(s.spawns(s.step(now + wait))) == 1
        now += wait + 1.0
    assert wait == pytest.approx(delay)


def test_backoff_resets_once_a_child_of_the_pool_is_ready(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 1)), crash_loop_limit=100)
    s.boot()
    for t in (1.0, 2.0, 3.0):
        s.step(t, s.exited(s.live()[0], KILLED))
        s.step(t + 0.5)
    assert s.sup.pools["main"].crashes == 3
    s.step(4.0, s.ready(s.live()[0]))
    s.step(5.0, s.exited(s.live()[0], KILLED))
    assert s.sup.wake_by(5.0) == pytest.approx(0.1)


def test_crash_loop_limit_stops_the_worker_with_its_code(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 1)), crash_loop_limit=3, crash_loop_window=60.0)
    now = 0.0
    s.step(now)
    codes = []
    for _ in range(3):  # children killed while booting: no progress, each counts
        now += 5.0
        out = s.step(now, s.exited(s.live()[0], KILLED))
        codes.append(s.exit_code(out))
        s.step(now + 1.0)
    assert codes == [None, None, EX_SOFTWARE]  # the master has no child left: it exits at once
    assert s.sup.stop == "quick" and s.sup.exit_code == EX_SOFTWARE
    assert "crash loop" in s.logs(s.actions)


def test_crashes_spread_over_more_than_the_window_do_not_stop(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 1)), crash_loop_limit=3, crash_loop_window=60.0)
    s.step(0.0)
    for now in (0.0, 40.0, 80.0, 120.0, 160.0):  # never 3 within 60 s
        s.step(now + 1.0, s.exited(s.live()[0], KILLED))
        s.step(now + 10.0)  # past the respawn backoff
    assert s.sup.stop is None and len(s.live()) == 1


def test_children_that_finished_work_do_not_count_toward_the_crash_loop(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 1, 1)), crash_loop_limit=2)
    s.boot()
    for now in (1.0, 2.0, 3.0, 4.0):
        (cid,) = s.live()
        s.step(now, s.ready(cid), s.done(cid, 5))
        s.step(now + 0.1, s.exited(cid, KILLED))
        s.step(now + 0.5)
    assert s.sup.stop is None
    assert s.sup.restarts["crash"] == 4 and s.sup.stats.totals()["done"] == 20


def test_requested_stops_exit_0_and_respawn_nothing(sim):
    s = sim()
    a, b = s.boot()
    out = s.step(1.0, s.sig(signal.SIGTERM))
    assert sorted(s.kills(out)) == [(a, signal.SIGTERM), (b, signal.SIGTERM)]
    out = s.step(2.0, s.exited(a, 0))
    assert s.spawns(out) == [] and s.exit_code(out) is None
    out = s.step(3.0, s.exited(b, KILLED))  # even a crash while stopping is not respawned
    assert s.spawns(out) == [] and s.exit_code(out) == EX_OK
    assert s.sup.restarts["crash"] == 0
