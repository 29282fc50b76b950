"""Retire and replace: memory recycling, the child's own retirement (max tasks, hard time limit),
rolling children after a reload one by one, TTIN/TTOU. The order matters: the replacement is
spawned before the old child is told to drain, and the old one drains only once it is ready."""

from __future__ import annotations

import signal

import pytest

from utilitarian.supervisor import events as ev
from utilitarian.supervisor.plan import PoolSpec

MiB = 1024 * 1024


def one_pool(sim, processes=1, **spec):
    return sim(sim.make_plan(PoolSpec("main", ("q",), processes, 2, **spec)))


def test_memory_is_measured_every_interval(sim):
    s = one_pool(sim)
    s.boot()
    measured = [t for t in (0.0, 1.0, 4.9, 5.0, 9.0, 10.0, 10.5)
                if any(isinstance(a, ev.MeasureMemory) for a in s.step(t))]
    assert measured == [5.0, 10.0]  # the boot step at 0.0 measured already


def test_over_the_memory_limit_the_replacement_comes_first_then_the_old_child_drains(sim):
    s = one_pool(sim, max_memory_per_child=200.0)
    (old,) = s.boot()
    out = s.step(1.0, ev.MemoryMeasured(old, 150 * MiB))
    assert s.state(old) == "running" and s.spawns(out) == []
    out = s.step(2.0, ev.MemoryMeasured(old, 250 * MiB))
    assert s.state(old) == "retiring" and s.kills(out) == []
    (new,) = [a.cid for a in s.spawns(out)]
    assert "over the limit of 200 MiB" in s.logs(out) and s.sup.children[new].replaces == "max_memory"
    out = s.step(3.0)  # the old child keeps working while its replacement boots
    assert s.kills(out) == [] and s.spawns(out) == []
    out = s.step(4.0, s.ready(new))
    assert s.kills(out) == [(old, signal.SIGTERM)] and s.state(old) == "draining"
    out = s.step(5.0, s.exited(old, 0))
    assert s.spawns(out) == [] and s.live() == [new]
    assert s.sup.restarts == {"max_memory": 1}
    assert s.sup.pools["main"].restarts == {"max_memory": 1}


@pytest.mark.parametrize("reason", ["max_tasks", "hard_time_limit"])
def test_a_child_retiring_itself_is_replaced_at_once_without_a_signal(sim, reason):
    s = one_pool(sim)
    (old,) = s.boot()
    out = s.step(1.0, ev.Report(old, {"e": "retire", "reason": reason, "drain_now": True}))
    assert s.state(old) == "draining" and s.kills(out) == []
    (new,) = s.spawns(out)  # capacity is restored while the old child finishes
    assert s.sup.children[new.cid].replaces == reason
    out = s.step(2.0, s.exited(old, 0))
    assert s.sup.restarts == {reason: 1} and s.spawns(out) == []


def test_a_retire_request_without_drain_now_waits_for_the_replacement(sim):
    s = one_pool(sim)
    (old,) = s.boot()
    out = s.step(1.0, ev.Report(old, {"e": "retire", "reason": "max_tasks"}))
    (new,) = [a.cid for a in s.spawns(out)]
    assert s.state(old) == "retiring"
    assert s.kills(s.step(2.0, s.ready(new))) == [(old, signal.SIGTERM)]


def test_reload_rolls_children_one_at_a_time(sim):
    s = one_pool(sim, processes=2)
    a, b = s.boot()
    out = s.step(1.0, s.sig(signal.SIGHUP))
    assert any(isinstance(x, ev.LoadConfig) for x in out) and s.notes(out, "reloading")
    plan = sim.make_plan(PoolSpec("main", ("q",), 2, 5))
    out = s.step(1.1, ev.Reloaded(plan, s.worker))
    assert s.sup.pools["main"].generation == 1 and s.sup.pools["main"].spec.threads == 5
    (c,) = [x.cid for x in s.spawns(out)]  # the oldest is retired and replaced first
    assert s.state(a) == "retiring" and s.state(b) == "running" and s.kills(out) == []
    assert s.spawns(s.step(1.5)) == []  # one at a time
    out = s.step(2.0, s.ready(c))
    assert s.kills(out) == [(a, signal.SIGTERM)]
    (d,) = [x.cid for x in s.spawns(out)]  # then the next one, in the same turn
    assert s.state(b) == "retiring" and s.kills(out) == [(a, signal.SIGTERM)]
    out = s.step(3.0, s.exited(a, 0), s.ready(d))
    assert s.kills(out) == [(b, signal.SIGTERM)]
    s.step(4.0, s.exited(b, 0))
    assert s.live() == [c, d] and s.sup.children[c].replaces == s.sup.children[d].replaces == "reload"
    assert [(x.cid, x.generation, x.pool.threads) for x in s.spawns(s.actions)][2:] == [(c, 1, 5), (d, 1, 5)]
    assert s.sup.restarts == {"reload": 2}
    assert s.spawns(s.step(5.0)) == []


def test_a_failed_reload_keeps_the_running_configuration(sim):
    s = one_pool(sim)
    s.boot()
    out = s.step(1.0, ev.ReloadFailed("utilitarian.toml: bad"))
    assert "reload failed, keeping the running configuration" in s.logs(out)
    assert s.notes(out, "ready") and s.sup.pools["main"].generation == 0
    # The refusal stays visible (STATUS=, `utilitarian status`) while the old configuration runs,
    (ready,) = s.notes(out, "ready")
    assert "reload failed, old configuration kept: utilitarian.toml: bad" in ready.text
    assert s.sup.reload_error == "utilitarian.toml: bad" and s.sup.reloads == {"failed": 1}
    # until a reload succeeds.
    out = s.step(2.0, ev.Reloaded(s.sup.plan, s.worker))
    assert s.sup.reload_error is None and "reload failed" not in s.notes(out, "ready")[0].text
    assert s.sup.reloads == {"failed": 1, "ok": 1}


def test_reload_removing_a_pool_drains_its_children_without_replacing_them(sim):
    s = sim(sim.make_plan(PoolSpec("a", ("q1",), 1, 1), PoolSpec("b", ("q2",), 1, 1)))
    a, b = s.boot()
    out = s.step(1.0, ev.Reloaded(sim.make_plan(PoolSpec("a", ("q1",), 1, 1)), s.worker))
    assert (b, signal.SIGTERM) in s.kills(out)
    s.step(2.0, s.ready(s.spawns(out)[0].cid))  # pool a rolls to its new generation
    s.step(3.0, s.exited(b, 0))
    assert "b" not in s.sup.pools and s.sup.restarts["crash"] == 0


@pytest.mark.parametrize("hup_allowed", [False, True])
def test_hup_while_stopping_or_without_a_reload_function_does_nothing(sim, hup_allowed):
    s = sim(can_reload=hup_allowed)
    s.boot()
    if hup_allowed:
        s.step(1.0, s.sig(signal.SIGTERM))
    out = s.step(2.0, s.sig(signal.SIGHUP))
    assert not any(isinstance(x, ev.LoadConfig) for x in out)


def test_ttin_grows_and_ttou_shrinks_draining_the_oldest(sim):
    s = one_pool(sim, processes=2)
    a, b = s.boot()
    (c,) = [x.cid for x in s.spawns(s.step(1.0, s.sig(signal.SIGTTIN)))]
    s.step(1.5, s.ready(c))
    out = s.step(2.0, s.sig(signal.SIGTTOU))
    assert s.kills(out) == [(a, signal.SIGTERM)] and s.spawns(out) == []
    s.step(3.0, s.exited(a, 0))
    assert s.live() == [b, c] and sum(s.sup.restarts.values()) == 0  # shrinking is no restart
    assert s.sup.children[c].replaces is None and not s.sup.pools["main"].owed
    for t in (4.0, 5.0, 6.0):  # never below one process
        s.step(t, s.sig(signal.SIGTTOU))
    assert s.sup.pools["main"].spec.processes == 1


def test_reload_client_verdict_from_the_masters_counters():
    from utilitarian.supervisor.reload_client import verdict

    assert verdict({}, {}) is None
    assert verdict({"ok": 2, "failed": 1}, {"ok": 2, "failed": 1}) is None  # still loading
    assert verdict({"ok": 2}, {"ok": 3}) == "ok"
    assert verdict({"failed": 0}, {"failed": 1}) == "failed"
    assert verdict({"ok": 0, "failed": 0}, {"ok": 1, "failed": 1}) == "failed"  # a refusal is never hidden
