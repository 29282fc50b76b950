"""Every task runs exactly once across pools, queues and threads; -Q restricts consumption;
no -Q consumes all 14 queues."""

from __future__ import annotations

import signal

from support.procs import ran_counts, wait_for
from utilitarian import queues
from utilitarian.app import TaskCall
from utilitarian.broker.topology import inspect_queues


def test_5000_tasks_over_3_queues_each_run_exactly_once(kit):
    # Given 5,000 tasks over three queues, and 100 on a queue this worker does not consume
    targets = ["default", "amr", "cleanup"]
    ids = kit.app.send_tasks([TaskCall("test.record", [i], queue=targets[i % 3]) for i in range(5000)])
    outside = kit.app.send_tasks([TaskCall("test.record", [i], queue="external") for i in range(100)])
    # When a worker with 2 children x 8 threads consumes the three queues
    worker = kit.worker("-Q", "default,amr,cleanup", "-c", "2", "--threads", "8")
    wait_for(lambda: len(ran_counts(kit.sink)) >= 5000, timeout=120, what="5,000 tasks to run")
    wait_for(lambda: all(s.messages == 0 for s in inspect_queues(kit.settings, [queues.DEFAULT, queues.AMR,
                                                                              queues.CLEANUP])),
             timeout=30, what="queues to drain")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    # Then each ran exactly once, nothing else ran, and the other queue was left alone
    counts = ran_counts(kit.sink)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert not set(outside) & set(counts)
    state = {s.name: s for s in inspect_queues(kit.settings, [queues.EXTERNAL, queues.DEAD_LETTER])}
    assert state[queues.EXTERNAL].messages == 100
    assert state[queues.DEAD_LETTER].messages == 0


def test_no_queue_option_consumes_all_14(kit):
    ids = kit.app.send_tasks([TaskCall("test.record", [q], queue=q) for q in queues.QUEUES])
    worker = kit.worker("-c", "1", "--threads", "4")
    wait_for(lambda: set(ran_counts(kit.sink)) == set(ids), timeout=60, what="one task on each queue to run")
    consumers = {s.name: s.consumers for s in inspect_queues(kit.settings, queues.QUEUES)}
    assert all(n >= 1 for n in consumers.values()), consumers
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
