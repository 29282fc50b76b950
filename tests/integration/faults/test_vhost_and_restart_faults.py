"""Faults of the broker itself under a consuming worker, on a private RabbitMQ node (booted in
the background while the other fault cases run, hence this module's name sorting last): a vhost
down and up, five broker restarts. Invariant in each: every task runs at least once, the worker
never stops for good (it consumed: every refusal is a transient state), and it consumes again."""

from __future__ import annotations

import signal

from support.broker_admin import restart_broker, vhost_down_for
from support.fault_lanes import fault_case
from support.procs import wait_for
from utilitarian import queues

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


@fault_case(private=True)
def test_vhost_down_and_up(kit):
    # Given 2,000 tasks being consumed by 2 children
    ids = kit.send("test.sleep", [[0.005] for _ in range(2000)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4")
    progress(kit, ids, 300, what="tasks before the vhost goes down")
    kit.wait_ready(2)  # both connected (one child alone can make that progress): each meets the fault
    # When the vhost goes down for 10 s (connections closed with "vhost is down", every
    # reconnect refused with 541 until it is restarted; 5 s ended before a status query answered
    # on a machine at load 20)
    admin = vhost_down_for(kit.rabbit, kit.vhost, 10.0)
    wait_for(lambda: not worker.alive() or worker.output().count("vhost is down") >= 2 or admin.poll() is not None,
             timeout=60, what="both children to meet the down vhost")
    assert worker.alive(), f"the worker stopped with exit {worker.wait(1)}"  # it consumed: not a boot failure
    assert worker.output().count("vhost is down") >= 2, admin.communicate()[0]
    # status says why they are not consuming, while it lasts
    why = wait_for(lambda: [c["why"] for c in kit.status()["children"] if not c["consuming"] and c["why"]]
                   or admin.poll() is not None, timeout=60, what="status to say why")
    assert isinstance(why, list) and any("is down" in w for w in why), why
    assert admin.wait(120) == 0, admin.communicate()[0]
    # Then they consume again, every task runs, and the worker stops normally
    all_ran(kit, ids)
    wait_for(lambda: kit.depth(DEFAULT)[DEFAULT] == 0, timeout=30, what="the queue to drain")
    kit.wait_ready(2)
    doc = wait_for(lambda: (d := kit.status())["reconnects"] >= 2 and all(
        c["consuming"] and c["why"] is None for c in d["children"]) and d, timeout=15, what="status after the fault")
    probe(kit)
    assert stop(worker) == 0
    kit.figures("vhost down and up", ids, f"{doc['reconnects']} reconnects")


@fault_case(private=True)
def test_five_broker_restarts_during_5000_tasks(kit):
    kit.configure("[worker]\nmax_deliveries = 50\n")
    ids = kit.send("test.record", [[i] for i in range(5000)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "8")
    kit.wait_ready(2)  # both connected before the first restart: each child reconnects after each one
    # When the broker is stopped and started five times while the tasks run
    for restart in range(5):
        progress(kit, ids, 700 * (restart + 1), what=f"progress before restart {restart + 1}")
        if restart:
            # one child alone can make the progress while the other is still in its reconnect
            # backoff: restarting then would fold two restarts into one reconnect of that child
            wait_for(lambda: (d := kit.status())["reconnects"] >= 2 * restart
                     and all(c["consuming"] for c in d["children"]), timeout=30,
                     what=f"both children back before restart {restart + 1}")
        restart_broker(kit.rabbit)
    # Then every task runs at least once; only deliveries in flight at a restart run twice
    all_ran(kit, ids)
    wait_for(lambda: kit.depth(DEFAULT)[DEFAULT] == 0, timeout=30, what="the queue to drain")
    kit.wait_ready(2)
    doc = wait_for(lambda: (d := kit.status())["reconnects"] >= 10 and d, timeout=15,
                   what="10 reconnects in status (each child, each restart)")
    probe(kit)
    assert stop(worker) == 0
    row = kit.figures("five broker restarts during 5,000 tasks", ids, f"{doc['reconnects']} reconnects")
    assert row["lost"] == 0 and row["duplicated"] <= 5 * 2 * 8
    assert kit.depth(DEAD)[DEAD] == 0
