"""Broker refusals and cancels under a consuming worker, on the shared broker (per-test vhost):
access refused on reconnect, a queue deleted under its consumers (the broker cancels them), a
queue missing after a connection blip. Invariant in each: every task runs at least once, the
worker never stops for good (it consumed: every refusal is a transient state), and it consumes
again afterwards. The vhost-down and broker-restart cases are in test_vhost_and_restart_faults."""

from __future__ import annotations

import signal

from support.broker_admin import close_connections, delete_queue, grant, revoke_and_disconnect
from support.fault_lanes import fault_case
from support.procs import wait_for
from utilitarian import queues
from utilitarian.broker.topology import declare_topology

DEFAULT, DEAD = queues.DEFAULT, queues.DEAD_LETTER


def stop(worker, timeout: float = 30) -> int:
    worker.signal(signal.SIGTERM)
    return worker.wait(timeout)


def progress(kit, ids, at_least: int, timeout: float = 60, what: str = "progress"):
    wanted = set(ids)
    wait_for(lambda: len(wanted & set(kit.ran())) >= at_least, timeout=timeout, what=what)


def all_ran(kit, ids, timeout: float = 120, what: str = "every task"):
    progress(kit, ids, len(set(ids)), timeout, what)


def probe(kit) -> None:
    (task_id,) = kit.send("test.record", [[0]])
    wait_for(lambda: task_id in kit.ran(), timeout=30, what="a probe task after the fault")


@fault_case()
def test_access_refused_on_reconnect(kit):
    # Given 1,000 tasks being consumed
    ids = kit.send("test.sleep", [[0.005] for _ in range(1000)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4")
    progress(kit, ids, 200, what="tasks before the permissions go")
    kit.wait_ready(2)  # both connected: each is refused on its reconnect (see the deletion case)
    # When the user's permissions on the vhost are revoked (a deploy rotating them) and the
    # connections drop: every reconnect is refused
    revoke_and_disconnect(kit.rabbit, kit.vhost)
    wait_for(lambda: not worker.alive() or worker.output().count("access refused") >= 2, timeout=30,
             what="both children to be refused")
    assert worker.alive(), f"the worker stopped with exit {worker.wait(1)}"  # it consumed: not a boot failure
    try:
        # (status comes with the children's heartbeats, up to a second after the log line: the
        # first "why" seen may still be the dropped connection's)
        why = wait_for(lambda: [c["why"] for c in kit.status()["children"] if not c["consuming"] and c["why"]
                                and "access refused" in c["why"]], timeout=30, what="status to say why")
        assert any("access refused" in w for w in why), why
    finally:
        grant(kit.rabbit, kit.vhost)
    # Then they get back in by themselves and every task runs
    all_ran(kit, ids)
    kit.wait_ready(2)
    doc = wait_for(lambda: (d := kit.status())["reconnects"] >= 2 and all(c["consuming"] for c in d["children"])
                   and d, timeout=15, what="status after the fault")
    probe(kit)
    assert stop(worker) == 0
    kit.figures("access refused on reconnect", ids, f"{doc['reconnects']} reconnects")


@fault_case()
def test_queue_deleted_under_its_consumers(kit):
    # Given a worker whose two children both consume the default queue (and 200 tasks it ran).
    # Both, before the deletion: a child that boots after it consumes the new queue straight
    # away, is never cancelled, and the two cancels below would be one (seen on a loaded machine).
    before = kit.send("test.record", [[i] for i in range(200)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4")
    all_ran(kit, before, what="the first tasks")
    kit.wait_ready(2)
    # When the queue is deleted (the broker cancels its consumers) and declared again at once,
    # as a producer or an operator running `utilitarian topology declare` would
    delete_queue(kit.broker_url, DEFAULT)
    declare_topology(kit.settings)
    # Then both children consume the new queue: tasks sent now run
    wait_for(lambda: kit.consumers(DEFAULT) == 2, timeout=30, what="both children consuming again")
    after = kit.send("test.record", [[i] for i in range(300)])
    all_ran(kit, after, what="tasks sent after the deletion")
    doc = wait_for(lambda: (d := kit.status())["consumer_cancels"] >= 2 and all(
        c["consuming"] and c["why"] is None for c in d["children"]) and d, timeout=15, what="cancels in status")
    assert stop(worker) == 0
    kit.figures("queue deleted under its consumers", after, f"{doc['consumer_cancels']} cancels")


@fault_case()
def test_queue_missing_after_a_connection_blip(kit):
    # Given a worker consuming two queues
    ids = kit.send("test.sleep", [[0.005] for _ in range(1000)])
    worker = kit.worker("-Q", "default,amr", "-c", "2", "--threads", "4")
    progress(kit, ids, 100, what="tasks before the blip")
    kit.wait_ready(2)  # both connected: each meets the 404 on its reconnect (see the deletion case)
    # When one queue is deleted and every connection drops: the reconnect meets a 404
    delete_queue(kit.broker_url, queues.AMR)
    close_connections(kit.rabbit, kit.vhost)
    # Then the children declare the topology again (nobody else does) and consume both queues
    wait_for(lambda: kit.consumers(queues.AMR) == 2 and kit.consumers(DEFAULT) == 2, timeout=30,
             what="both queues consumed again")
    more = kit.send("test.record", [[i] for i in range(200)], queue="amr")
    all_ran(kit, ids + more)
    kit.wait_ready(2)
    doc = wait_for(lambda: (d := kit.status())["reconnects"] >= 2 and d, timeout=15, what="reconnects in status")
    probe(kit)
    assert stop(worker) == 0
    kit.figures("queue missing after a connection blip", ids + more,
                f"{doc['reconnects']} reconnects, {doc['consumer_cancels']} cancels")
