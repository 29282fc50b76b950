"""Operators' changes through `utilitarian control`: checked first (a bad one changes nothing),
then carried out by the usual rules (grow spawns, shrink drains the oldest, drain and resume roll
the pools that consume the queue, a pool left without queues has no children)."""

from __future__ import annotations

import pytest

from utilitarian.supervisor import events as ev
from utilitarian.supervisor.commands import check_command
from utilitarian.supervisor.plan import PoolSpec

DEFAULT, AMR = "utilitarian.tasks.default", "utilitarian.tasks.amr"


def two_pools(sim):
    return sim(sim.make_plan(PoolSpec("main", (DEFAULT, AMR), 2, 2), PoolSpec("amr", (AMR,), 1, 2)))


@pytest.mark.parametrize("request_, error", [
    ({"cmd": "grow", "pool": "nope", "n": 1}, "no pool 'nope'"),
    ({"cmd": "grow", "pool": "main", "n": 0}, "at least 1"),
    ({"cmd": "grow", "pool": "main", "n": "2"}, "whole number"),
    ({"cmd": "shrink", "pool": "main", "n": 2}, "keeps at least 1"),
    ({"cmd": "grow", "pool": "main", "n": 300}, "over the limit"),
    ({"cmd": "drain", "queue": "cleanup"}, "does not consume"),
    ({"cmd": "drain", "queue": "no.such"}, "no.such"),
    ({"cmd": "drain"}, "queue name is required"),
    ({"cmd": "explode"}, "unknown command"),
])
def test_bad_commands_are_refused_and_change_nothing(sim, request_, error):
    s = two_pools(sim)
    s.boot()
    before = [(p.spec, p.generation) for p in s.sup.pools.values()]
    message, command = check_command(s.sup, request_)
    assert command is None and error in message
    assert [(p.spec, p.generation) for p in s.sup.pools.values()] == before


def test_grow_spawns_and_shrink_drains_without_replacement(sim):
    s = two_pools(sim)
    s.boot()
    _, grow = check_command(s.sup, {"cmd": "grow", "pool": "amr", "n": 2})
    assert len(s.spawns(s.step(1.0, grow))) == 2
    assert s.sup.plan.pools[1].processes == 3
    _, shrink = check_command(s.sup, {"cmd": "shrink", "pool": "main", "n": 1})
    out = s.step(2.0, shrink)
    assert not s.spawns(out) and len(s.kills(out)) == 1
    assert s.sup.pools["main"].spec.processes == 1


def test_drain_rolls_pools_to_children_without_the_queue_and_resume_brings_it_back(sim):
    s = two_pools(sim)
    s.boot()
    _, drain = check_command(s.sup, {"cmd": "drain", "queue": "amr"})
    out = s.step(1.0, drain)
    # main rolls to a child consuming default only; amr (no queue left) drains without replacement
    assert [sp.pool.queues for sp in s.spawns(out)] == [(DEFAULT,)]
    assert s.sup.pools["amr"].spec.processes == 0 and s.sup.pools["amr"].configured.processes == 1
    assert s.sup.drained == {AMR}
    _, resume = check_command(s.sup, {"cmd": "resume", "queue": AMR})
    generation = s.sup.pools["main"].generation
    out = s.step(2.0, resume)
    # amr gets its child back at once; main rolls again, one child at a time as after a reload
    assert [sp.pool.queues for sp in s.spawns(out)] == [(AMR,)]
    assert s.sup.pools["main"].spec.queues == (DEFAULT, AMR) and s.sup.pools["main"].generation == generation + 1
    assert not s.sup.drained


def test_a_stopping_worker_takes_no_command(sim):
    import signal

    s = two_pools(sim)
    s.boot()
    s.step(1.0, s.sig(signal.SIGTERM))
    message, command = check_command(s.sup, {"cmd": "grow", "pool": "main", "n": 1})
    assert command is None and "stopping" in message
    assert isinstance(ev.ControlCommand("grow", "main", None, 1), ev.ControlCommand)
