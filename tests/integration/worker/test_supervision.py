"""Supervision with real processes, signalling the master pid only: children killed under load,
graceful TERM with work in flight, hard time limits, recycling, and a refused password."""

from __future__ import annotations

import collections
import os
import signal
import time

from support.procs import children_of, ran_counts, read_sink, wait_for
from utilitarian import queues
from utilitarian.app import TaskCall
from utilitarian.broker.topology import inspect_queues


def queue_depth(kit, *names):
    return {s.name: s.messages for s in inspect_queues(kit.settings, list(names))}


def test_sigkill_a_child_every_second_loses_nothing(kit):
    kit.configure("[worker]\nmax_deliveries = 50\n")
    # 10,000 tasks of 20 ms on 16 slots take about 13 s: a dozen kills land mid-run
    ids = kit.app.send_tasks([TaskCall("test.sleep", [0.02]) for i in range(10_000)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "8")
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=30, what="two children")
    kills = 0
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    # When a child is SIGKILLed every second while the 10,000 tasks run
    while len(ran_counts(kit.sink)) < 10_000 and time.monotonic() < deadline:
        time.sleep(1.0)
        kids = [pid for pid in children_of(worker.pid) if pid not in killed]
        if kids and len(ran_counts(kit.sink)) < 9_500:
            victim = kids[kills % len(kids)]
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
            kills += 1
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=60, what="every task to run")
    wait_for(lambda: queue_depth(kit, queues.DEFAULT)[queues.DEFAULT] == 0, timeout=30, what="queue drained")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    # Then every task ran; only those in flight at a kill ran twice (at most prefetch per kill)
    counts = ran_counts(kit.sink)
    assert kills >= 3
    assert set(counts) == set(ids)
    twice = [t for t, n in counts.items() if n > 1]
    assert len(twice) <= kills * 8
    assert queue_depth(kit, queues.DEAD_LETTER)[queues.DEAD_LETTER] == 0
    # and the master respawned each killed child
    assert "was killed by SIGKILL" in worker.output()
    assert worker.output().count("spawned child") >= 2 + kills


def test_term_with_50_tasks_in_flight_drains_them_and_exits_0(kit):
    ids = kit.app.send_tasks([TaskCall("test.sleep", [2.0]) for _ in range(50)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "25", "--graceful-timeout", "20")
    wait_for(lambda: sum(1 for _, _, what in read_sink(kit.sink) if what == "start") == 50, timeout=30,
             what="50 tasks in flight")
    stopped = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(25) == 0
    assert time.monotonic() - stopped < 20
    counts = ran_counts(kit.sink)
    assert set(counts) == set(ids) and max(counts.values()) == 1
    # nothing is redelivered afterwards: the queue is empty and nothing is unacked
    depth = queue_depth(kit, queues.DEFAULT, queues.DEAD_LETTER)
    assert depth == {queues.DEFAULT: 0, queues.DEAD_LETTER: 0}


def test_task_blocking_forever_is_dead_lettered_after_its_retries(kit):
    blocked = kit.app.send_task("test.block_forever")
    others = kit.app.send_tasks([TaskCall("test.sleep", [0.2]) for _ in range(40)])
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "4", "--graceful-timeout", "10")
    # The task has a 2 s hard limit and one retry: two children are replaced, then it is dead.
    wait_for(lambda: queue_depth(kit, queues.DEAD_LETTER)[queues.DEAD_LETTER] == 1, timeout=60,
             what="the blocking task to be dead-lettered")
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(others), timeout=60, what="the other tasks")
    starts = [pid for tid, pid, what in read_sink(kit.sink) if tid == blocked and what == "start"]
    assert len(starts) == 2 and starts[0] != starts[1]  # each attempt in a different child
    out = worker.output()
    assert out.count("exceeded its hard time limit") == 2
    assert "retires now (hard_time_limit)" in out
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert max(ran_counts(kit.sink).values()) == 1


def test_max_tasks_recycles_children_without_losing_tasks(kit):
    ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(600)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4", "--max-tasks-per-child", "100")
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=90, what="all tasks")
    wait_for(lambda: queue_depth(kit, queues.DEFAULT)[queues.DEFAULT] == 0, timeout=30, what="queue drained")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    counts = ran_counts(kit.sink)
    assert max(counts.values()) == 1
    pids = {pid for _, pid, _ in read_sink(kit.sink)}
    assert len(pids) >= 6  # 600 tasks, at most ~100 (plus what was in flight) per child
    per_child = collections.Counter(pid for _, pid, _ in read_sink(kit.sink))
    assert max(per_child.values()) <= 100 + 4
    assert worker.output().count("retires now (max_tasks)") >= 5
    assert queue_depth(kit, queues.DEAD_LETTER)[queues.DEAD_LETTER] == 0


def test_recycling_children_while_tasks_retry_loses_nothing(kit):
    # Every retry comes back through the delay levels, with their routing key; a child at its
    # task limit cancels inside a read, and what pika held of that read is dispatched after the
    # cancel. Such a delivery's next retry must go back to its queue (tests/integration/
    # test_consumer_cancel.py has the deterministic case; this is the worker doing it ~40 times).
    ids = kit.app.send_tasks([TaskCall("test.flaky", [2]) for _ in range(400)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4", "--max-tasks-per-child", "30")
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=120, what="every task's third attempt")
    wait_for(lambda: queue_depth(kit, queues.DEFAULT)[queues.DEFAULT] == 0, timeout=30, what="queue drained")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert max(ran_counts(kit.sink).values()) == 1
    assert worker.output().count("retires now (max_tasks)") >= 20
    assert queue_depth(kit, queues.DEAD_LETTER)[queues.DEAD_LETTER] == 0


def test_max_memory_recycles_a_child_without_losing_tasks(kit):
    big = kit.app.send_task("test.allocate", [300])
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "4", "--max-memory-per-child", "200")
    wait_for(lambda: big in ran_counts(kit.sink), timeout=30, what="the 300 MiB task")
    fat = [pid for tid, pid, _ in read_sink(kit.sink) if tid == big][0]
    # the master checks RSS every 5 s; the fat child is replaced, its replacement is ready first
    wait_for(lambda: "over the limit of 200 MiB" in worker.output(), timeout=30, what="an RSS recycle")
    wait_for(lambda: fat not in children_of(worker.pid) and len(children_of(worker.pid)) == 1, timeout=30,
             what="the fat child to be replaced")
    ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(200)])
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=60, what="tasks after the recycle")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert max(ran_counts(kit.sink).values()) == 1
    assert f"child {fat} exited after draining" in worker.output()


def test_wrong_password_exits_78_without_respawning(kit, rabbit, vhost):
    kit.broker_url = rabbit.url_for(vhost, password="not-the-password")
    kit.configure("")
    worker = kit.worker("-Q", "default", "-c", "2")
    code = worker.wait(20)
    assert code == 78
    out = worker.output()
    assert out.count("spawned child") == 2  # no respawn loop
    assert "not-the-password" not in out


def test_connections_dropped_three_times_lose_nothing(kit, rabbit, vhost):
    kit.configure("[worker]\nmax_deliveries = 50\n")
    ids = kit.app.send_tasks([TaskCall("test.sleep", [0.01]) for _ in range(3000)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "8")
    for drop in range(3):
        wait_for(lambda: len(ran_counts(kit.sink)) >= 500 * (drop + 1), timeout=60, what=f"progress before drop {drop}")
        rabbit.close_connections(vhost)
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=120, what="every task after the drops")
    wait_for(lambda: queue_depth(kit, queues.DEFAULT)[queues.DEFAULT] == 0, timeout=30, what="queue drained")
    assert worker.output().count("connection lost") >= 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert queue_depth(kit, queues.DEAD_LETTER)[queues.DEAD_LETTER] == 0


def test_a_frozen_child_is_aborted_with_a_stack_dump_and_its_message_becomes_poison(kit):
    kit.configure("[worker]\nheartbeat_timeout = 2.0\nmax_deliveries = 2\n")
    frozen = kit.app.send_task("test.hold_the_gil")
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "2")
    # The message freezes each child it reaches; after two deliveries it is dead-lettered.
    wait_for(lambda: queue_depth(kit, queues.DEAD_LETTER)[queues.DEAD_LETTER] == 1, timeout=60,
             what="the freezing task to be dead-lettered as poison")
    starts = [pid for tid, pid, what in read_sink(kit.sink) if tid == frozen and what == "start"]
    assert len(starts) == 2 and starts[0] != starts[1]
    out = worker.output()
    assert out.count("heartbeat timeout 2.0s); SIGABRT dumps its stacks") == 2
    assert "Fatal Python error: Aborted" in out and "hold_the_gil" in out  # faulthandler's dump
    assert "dead-lettering it as poison" in out
    # the worker goes on with a fresh child
    ok = kit.app.send_task("test.record")
    wait_for(lambda: ok in ran_counts(kit.sink), timeout=30, what="a task after the poison")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
