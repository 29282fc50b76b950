"""The master under faults, with real processes and a real broker, asserting on `status --json`:
exit codes by boot vs running (a child that exits 78 after the worker was ready is a crash to
respawn, not a reason to stop for good), the crash-loop limit, and local clients that must not
delay reaping or respawning. The master pid is the only one signalled, except children killed
on purpose as the fault itself."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request

from support.procs import children_of, ran_counts, read_sink, wait_for
from support.rabbit import free_port
from utilitarian.errors import EX_SOFTWARE
from utilitarian.app import TaskCall  # old and new home: the fault tests also run on old code


def ready_pids(doc: dict) -> set[int]:
    """Children that consume, from a status document ({} while the master starts)."""
    return {c["pid"] for c in doc.get("children", ()) if c["ready"] and c["state"] == "running"}


def live_status(kit, worker, *, cli: bool = False) -> dict:
    doc = kit.status(cli=cli)
    if not doc and not worker.alive():
        raise AssertionError(f"the worker stopped (exit {worker.popen.poll()}):\n{worker.output()[-3000:]}")
    return doc


def test_a_child_exiting_78_after_the_worker_was_ready_is_respawned(kit):
    # Given a worker whose two children consume
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "2")
    wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 2, timeout=60, what="two ready children")
    # When a child exits 78 (what a consumer refused by the broker on a reconnect does)
    flag = kit.tmp / "exited-once"
    task_id = kit.app.send_task("test.exit_once", [78, str(flag)])
    wait_for(lambda: flag.exists(), timeout=30, what="the child to exit 78")
    # Then the master respawns it: the message is redelivered and runs, the worker stays up
    wait_for(lambda: task_id in ran_counts(kit.sink), timeout=60, what="the redelivered task to run")
    doc = live_status(kit, worker, cli=True)
    assert doc["restarts_by_cause"]["crash"] == 1 and doc["restarts"] == 1
    wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 2, timeout=60, what="two ready children again")
    ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(20)])
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=60, what="tasks after the respawn")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_access_refused_on_reconnect_after_ready_keeps_the_worker_up(kit, rabbit, vhost):
    """The broker refuses the vhost to reconnecting children (permissions revoked, connections
    closed), then accepts again. Before: children exit 78, the master stops with 78 and systemd's
    RestartPreventExitStatus keeps the unit down. Now: a crash to respawn (or, with children that
    retry in place, a refusal they report); the worker consumes again once the broker allows it.
    crash_loop_limit is raised so that the refusal's length, not the limit, is what is tested."""
    kit.configure("[worker]\ncrash_loop_limit = 1000\n")
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "2")
    wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 2, timeout=60, what="two ready children")
    rabbit.ctl("clear_permissions", "-p", vhost, "guest")
    try:
        rabbit.close_connections(vhost)

        def refusal_visible() -> bool:
            doc = live_status(kit, worker)
            reported = any(c.get("reconnects") or c.get("why") for c in doc.get("children", ()))
            return doc.get("restarts_by_cause", {}).get("crash", 0) >= 1 or reported

        wait_for(refusal_visible, timeout=60, what="the refusal to show in status")
    finally:
        rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(20)])
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=90, what="tasks after the refusal ended")
    wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 2, timeout=60, what="two ready children")
    assert worker.alive()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


class HangingClients:
    """Local clients that misbehave until stopped: control clients that send one byte per
    `interval` and never finish a request, and idle TCP connections to the metrics port that
    never send anything. Each one dropped by the master is opened again at once."""

    def __init__(self, control_path: str, metrics_port: int, *, slow_intervals=(1.0, 0.25), idle=12):
        self.control_path = control_path
        self.metrics_port = metrics_port
        self.stop = threading.Event()
        self.bytes_sent = 0
        self.drops = 0
        self.threads = [threading.Thread(target=self._trickle, args=(i,), daemon=True) for i in slow_intervals]
        self.threads.append(threading.Thread(target=self._idle, args=(idle,), daemon=True))

    def start(self) -> "HangingClients":
        for t in self.threads:
            t.start()
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _trickle(self, interval: float) -> None:
        while not self.stop.is_set():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.control_path)
                payload = b'{"cmd": "status", "padding": "' + b"x" * 100000
                for byte in payload:
                    if self.stop.wait(interval):
                        break
                    s.send(bytes([byte]))
                    self.bytes_sent += 1
            except OSError:
                self.drops += 1
            finally:
                s.close()

    def _idle(self, count: int) -> None:
        conns: list[socket.socket] = []
        while not self.stop.is_set():
            for s in list(conns):
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                conns.remove(s)
                s.close()
                self.drops += 1
            while len(conns) < count:
                try:
                    conns.append(socket.create_connection(("127.0.0.1", self.metrics_port), timeout=1.0))
                except OSError:
                    break
            self.stop.wait(0.05)
        for s in conns:
            s.close()


def test_a_child_killed_while_local_clients_hang_is_respawned_within_2s(kit):
    # Given a worker with a metrics port, two ready children, and clients that hang on both sockets
    port = free_port()
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "2", "--metrics-port", str(port))
    wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 2, timeout=60, what="two ready children")
    control_path = str(next(kit.run_dir().glob("worker-*.sock")))
    clients = HangingClients(control_path, port).start()
    try:
        wait_for(lambda: clients.bytes_sent >= 8, timeout=10, what="the slow clients to be talking")
        # When a child is SIGKILLed
        victim = sorted(children_of(worker.pid))[0]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # Then the master reaps it and starts its replacement within 2 s although the clients hang
        def replaced():
            kids = set(children_of(worker.pid)) - {victim}  # the victim shows until it is reaped
            return kids if len(kids) == 2 else None

        replacement = wait_for(replaced, timeout=2.0, interval=0.02, what="the replacement child")
        latency = time.monotonic() - killed
        print(f"respawn latency with hanging clients: {latency:.3f}s")
        # and `status` answers while they still hang, counting the crash and showing the new child
        doc = live_status(kit, worker, cli=True)
        assert victim not in {c["pid"] for c in doc["children"]}
        assert {c["pid"] for c in doc["children"]} == set(replacement)
        assert doc["restarts_by_cause"]["crash"] == 1
        wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 2, timeout=60, what="two ready children")
        ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(20)])
        wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=60, what="tasks after the respawn")
        assert clients.drops >= 1  # the hanging clients were dropped, not served forever
        # the metrics port answers too while they hang, with the same figures
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert body.count("utilitarian_child_consuming{") == 2 and "utilitarian_child_consuming{" in body
        assert all(line.endswith(" 1") for line in body.splitlines() if line.startswith("utilitarian_child_consuming{"))
        assert 'pool="main",cause="crash"} 1' in body
    finally:
        clients.close()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_children_killed_during_boot_end_in_the_crash_loop_code(kit):
    # Given a broker that never answers (children stay booting) and a crash-loop limit of 3
    kit.broker_url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    kit.configure("[worker]\ncrash_loop_limit = 3\ncrash_loop_window = 120.0\n")
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "2")
    killed: list[int] = []
    # When each child is killed before it ever became ready
    while worker.alive() and len(killed) < 5:
        pid = wait_for(lambda: [p for p in children_of(worker.pid) if p not in killed] or not worker.alive(),
                       timeout=30, what="a booting child")
        if pid is True:
            break
        doc = kit.status()
        if doc:
            assert not any(c["ready"] for c in doc["children"])
        os.kill(pid[0], signal.SIGKILL)
        killed.append(pid[0])
        wait_for(lambda: pid[0] not in children_of(worker.pid), timeout=10, what="the kill to land")
    # Then the third crash stops the master with the crash-loop code, and nothing respawns after it
    assert worker.wait(30) == EX_SOFTWARE
    assert len(killed) == 3


def test_children_killed_after_doing_work_are_respawned_without_a_crash_loop(kit):
    # Given a crash-loop limit of 2 and one child
    kit.configure("[worker]\ncrash_loop_limit = 2\n")
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "2")
    for round_ in range(3):
        # When the ready child has finished tasks and is then killed (an OOM kill, an operator)
        wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 1, timeout=60, what="a ready child")
        ids = kit.app.send_tasks([TaskCall("test.record", [round_, i]) for i in range(5)])
        wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=30, what="the round's tasks")
        wait_for(lambda: live_status(kit, worker)["children"][0]["done"] >= 5, timeout=30,
                 what="the child's counters in status")
        victim = live_status(kit, worker)["children"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in children_of(worker.pid) and children_of(worker.pid), timeout=30,
                 what="a replacement")
    # Then each is replaced, counted as a crash, and the worker keeps going
    wait_for(lambda: len(ready_pids(live_status(kit, worker))) == 1, timeout=60, what="a ready child")
    doc = live_status(kit, worker, cli=True)
    assert doc["restarts_by_cause"]["crash"] == 3
    assert doc["totals"]["done"] == 15
    assert len({pid for _, pid, _ in read_sink(kit.sink)}) == 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
