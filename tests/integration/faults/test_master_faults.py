"""The master SIGKILLed under load: its children notice (parent-death signal, broken status pipe),
stop taking work, finish what they hold within the graceful timeout and exit; a new worker
runs the rest. Nothing is lost, nothing in flight runs twice."""

from __future__ import annotations

import signal
import time

import psutil

from support.fault_lanes import fault_case
from support.procs import children_of, read_sink, wait_for
from utilitarian import queues


@fault_case()
def test_children_of_a_sigkilled_master_drain_and_exit(kit):
    graceful = 10.0
    # Given 60 tasks of 1 s on 2 children x 4 threads
    ids = kit.send("test.sleep", [[1.0] for _ in range(60)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4", "--graceful-timeout", str(graceful))
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=30, what="two children")
    kids = [psutil.Process(pid) for pid in children_of(worker.pid)]
    wait_for(lambda: sum(1 for _, _, w in read_sink(kit.sink) if w == "start") >= 8, timeout=30,
             what="both children busy")
    # When the master is SIGKILLed (nobody will reap, respawn or stop the children)
    worker.signal(signal.SIGKILL)
    killed = time.monotonic()
    worker.wait(10)
    # Then each child stops consuming, finishes what it holds and exits within the graceful timeout
    gone, alive = psutil.wait_procs(kids, timeout=graceful + 5)
    assert not alive, f"children still running {time.monotonic() - killed:.1f}s after the master died"
    took = time.monotonic() - killed
    started = {t for t, _, w in read_sink(kit.sink) if w == "start"}
    assert started <= set(kit.ran())  # whatever they started, they finished
    left = kit.depth(queues.DEFAULT)[queues.DEFAULT]
    assert left > 0  # they stopped taking work: 60 tasks take 7.5 s on 8 threads
    # and a new worker runs the rest: every task once
    replacement = kit.worker("-Q", "default", "-c", "1", "--threads", "8")
    wait_for(lambda: set(kit.ran()) >= set(ids), timeout=60, what="the rest of the tasks")
    replacement.signal(signal.SIGTERM)
    assert replacement.wait(30) == 0
    row = kit.figures("master SIGKILLed", ids, f"children gone {took:.1f}s after, {left} left for the next worker")
    assert row["duplicated"] == 0
