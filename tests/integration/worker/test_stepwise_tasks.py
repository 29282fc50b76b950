"""Stepwise tasks (utilitarian/steps.py) in a real worker child on a real broker: each task asks a
TCP server of the test and waits for its answer parked in the child's wait loop. A wait that times
out resumes its task, which finishes and is acked; a SIGTERM drain waits for parked tasks, which
end by their own answers, and exits 0 with every task run once and acked; a SIGKILLed child's
parked tasks are redelivered to its successor and run to their end there.

Limits of the evidence: the server here answers by the test's say-so, so "parked" is inferred
from every task having started while fewer threads than tasks exist; the AMR pipeline with parked
Modbus polls under SIGKILL is tests/integration/amr_pipeline/test_end_to_end.py."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from support.procs import children_of, ran_counts, read_sink, wait_for
from utilitarian import queues
from utilitarian.app import TaskCall
from utilitarian.broker.topology import inspect_queues


class Server:
    """Accepts connections; each asks with one line; `answer_all()` answers every open one."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)

    def answer_all(self) -> int:
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            try:
                conn.sendall(b"ok\n")
            except OSError:
                pass
        return len(conns)

    def close(self):
        self.listener.close()
        with self.lock:
            for conn in self.conns:
                conn.close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def events(kit, what):
    return [task_id for task_id, _pid, w in read_sink(kit.sink) if w == what]


def queue_empty(kit):
    (state,) = inspect_queues(kit.settings, [queues.DEFAULT])
    return state.messages == 0


def park_tasks(kit, server, n: int, timeout: float):
    """n tasks waiting on `server`, and a worker child with n threads' prefetch running them."""
    ids = kit.app.send_tasks([TaskCall("test.steps_wait", [server.port, timeout]) for _ in range(n)])
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", str(n))
    wait_for(lambda: len(events(kit, "start")) >= n, timeout=60, what=f"{n} tasks to park")
    return ids, worker


def assert_each_ran_once(kit, ids):
    counts = ran_counts(kit.sink)
    assert set(counts) == set(ids) and max(counts.values()) == 1


def test_a_wait_that_times_out_resumes_its_task_which_is_acked(kit, server):
    # The server never answers: every wait ends at its deadline
    ids = kit.app.send_tasks([TaskCall("test.steps_wait", [server.port, 0.5]) for _ in range(12)])
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "12")
    wait_for(lambda: len(ran_counts(kit.sink)) >= 12, timeout=60, what="12 tasks to time out")
    assert_each_ran_once(kit, ids)
    assert sorted(events(kit, "timed-out")) == sorted(ids) and not events(kit, "got")
    wait_for(lambda: queue_empty(kit), timeout=30, what="the queue to be empty (every task acked)")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_a_sigterm_drain_waits_for_parked_tasks_and_exits_0(kit, server):
    # Given 30 tasks parked on their answers in one child with 30 threads' prefetch
    ids, worker = park_tasks(kit, server, 30, 60.0)
    # When the master is told to stop, and only then the answers come
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "draining" in worker.output() or not worker.alive(), timeout=10, what="the drain to begin")
    assert worker.alive()  # the drain waits for the parked tasks
    assert server.answer_all() == 30
    # Then each task ran once with its answer, every one was acked, and the worker exited 0
    assert worker.wait(60) == 0, worker.output()[-2000:]
    assert_each_ran_once(kit, ids)
    assert sorted(events(kit, "got")) == sorted(ids)
    assert queue_empty(kit)


def test_a_sigkilled_childs_parked_tasks_are_redelivered_and_run_once(kit, server):
    # Given 20 tasks parked in a child
    ids, worker = park_tasks(kit, server, 20, 60.0)
    (child,) = children_of(worker.pid)
    first = {task_id for task_id, pid, what in read_sink(kit.sink) if what == "start"}
    assert first == set(ids)
    # When the child is SIGKILLed with all of them parked
    os.kill(child, signal.SIGKILL)
    # Then its successor gets every one again and, once answered, runs each to its end once
    def restarted():
        server.answer_all()  # the dead child's connections, then the new child's
        return len(ran_counts(kit.sink)) >= 20
    wait_for(restarted, timeout=90, interval=0.2, what="the redelivered tasks to run")
    assert_each_ran_once(kit, ids)
    assert all(pid != child for task_id, pid, what in read_sink(kit.sink) if what == "ran")
    wait_for(lambda: queue_empty(kit), timeout=30, what="the queue to be empty")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
