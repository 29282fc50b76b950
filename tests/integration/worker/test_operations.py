"""Operating a running worker: idle exit, HUP reload, TTIN/TTOU, sd_notify on a real datagram
socket, `utilitarian status`, metrics, and the dead-letter CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

from support.procs import NotifySocket, children_of, ran_counts, wait_for
from utilitarian import queues
from utilitarian.app import TaskCall
from utilitarian.broker.topology import inspect_queues


def cli(kit, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utilitarian", *args, "--config", str(kit.config_path)],
                          capture_output=True, text=True, timeout=60)


def status(kit) -> dict:
    proc = cli(kit, "status", "--json")
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads(proc.stdout)


def ready_children(kit) -> int:
    workers = status(kit)["workers"]
    return len([c for c in workers[0]["children"] if c["ready"]]) if workers else 0


def test_exit_when_idle(kit):
    ids = kit.app.send_tasks([TaskCall("test.sleep", [0.05]) for _ in range(40)])
    worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4", "--exit-when-idle", "2")
    assert worker.wait(60) == 0
    assert set(ran_counts(kit.sink)) == set(ids)
    assert "exiting when idle" in worker.output()


def test_hup_rolls_children_with_the_new_thread_count_losing_nothing(kit):
    profile = '[[workers.hup.pools]]\nqueues = ["default"]\nprocesses = 2\nthreads = {threads}\n'
    kit.configure(profile.format(threads=2))
    worker = kit.worker("--profile", "hup")
    wait_for(lambda: ready_children(kit) == 2, timeout=30,
             what="two ready children")
    before = set(children_of(worker.pid))
    ids = kit.app.send_tasks([TaskCall("test.sleep", [0.05]) for _ in range(300)])
    kit.configure(profile.format(threads=5))
    worker.signal(signal.SIGHUP)

    def rolled():
        doc = status(kit)["workers"][0]
        kids = {c["pid"] for c in doc["children"] if c["ready"] and c["state"] == "running"}
        return doc["pools"][0]["threads"] == 5 and len(kids) == 2 and not kids & before

    wait_for(rolled, timeout=60, what="both children replaced by 5-thread ones")
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=60, what="tasks sent around the reload")
    assert max(ran_counts(kit.sink).values()) == 1
    assert "configuration reloaded" in worker.output()
    # a broken file on HUP keeps the running configuration and its children,
    good = kit.config_path.read_text()
    rolled_pids = {c["pid"] for c in status(kit)["workers"][0]["children"]}
    kit.config_path.write_text("[worker\n")
    worker.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running configuration" in worker.output(), timeout=10,
             what="the reload to be refused")
    assert worker.alive()
    kit.config_path.write_text(good)  # for `utilitarian status`, which reads it too (no HUP: nothing reloads)
    # and says so in `utilitarian status` until a reload succeeds.
    doc = status(kit)["workers"][0]
    assert doc["reload_error"] and str(kit.config_path) in doc["reload_error"], doc["reload_error"]
    assert {c["pid"] for c in doc["children"]} == rolled_pids and doc["pools"][0]["threads"] == 5
    assert "reload failed, running the old configuration" in cli(kit, "status", "--no-queues").stdout
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def reload_client(kit, pid: int) -> subprocess.CompletedProcess:
    """What the unit's ExecReload= runs, as systemd runs it ($RUNTIME_DIRECTORY set)."""
    import os

    return subprocess.run([sys.executable, "-m", "utilitarian.supervisor.reload_client", str(pid)],
                          capture_output=True, text=True, timeout=90,
                          env={**os.environ, "RUNTIME_DIRECTORY": str(kit.control_socket())})


def test_reload_client_waits_for_the_masters_answer(kit):
    profile = '[[workers.rc.pools]]\nqueues = ["default"]\nprocesses = 1\nthreads = {threads}\n'
    kit.configure(profile.format(threads=2))
    worker = kit.worker("--profile", "rc")
    wait_for(lambda: ready_children(kit) == 1, timeout=30, what="a ready child")
    good = kit.config_path.read_text()
    # A broken file: the reload fails with 78 and the reason, and the worker runs on unchanged,
    kit.config_path.write_text(good.replace("[[workers.rc.pools]]", "[[workers.rc.pools]", 1))
    refused = reload_client(kit, worker.pid)
    assert refused.returncode == 78, refused
    assert "reload refused" in refused.stderr and str(kit.config_path) in refused.stderr
    kit.config_path.write_text(good)
    doc = status(kit)["workers"][0]
    assert doc["reloads"] == {"ok": 0, "failed": 1} and doc["pools"][0]["threads"] == 2
    assert worker.alive()
    # a good one is accepted (exit 0) and the children roll to it.
    kit.configure(profile.format(threads=3))
    accepted = reload_client(kit, worker.pid)
    assert accepted.returncode == 0, accepted
    doc = status(kit)["workers"][0]
    assert doc["reloads"] == {"ok": 1, "failed": 1} and doc["reload_error"] is None
    assert doc["pools"][0]["threads"] == 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_ttin_ttou_grow_and_shrink_the_pool(kit):
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "2")
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=30, what="one child")
    worker.signal(signal.SIGTTIN)
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=30, what="two children after TTIN")
    worker.signal(signal.SIGTTIN)
    wait_for(lambda: len(children_of(worker.pid)) == 3, timeout=30, what="three children after TTIN")
    worker.signal(signal.SIGTTOU)
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=30, what="two children after TTOU")
    ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(50)])
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=30, what="tasks after resizing")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_sd_notify_ready_status_watchdog_stopping(kit):
    notify = NotifySocket()
    try:
        started = time.monotonic()
        worker = kit.worker("-Q", "default", "-c", "2", "--threads", "4",
                            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
        wait_for(lambda: notify.seen("READY=1"), timeout=30, what="READY=1")
        ready_after = time.monotonic() - started
        ready = [m for m in notify.poll() if "READY=1" in m][0]
        assert f"MAINPID={worker.pid}" in ready
        # READY only once both children consume: the queue shows two consumers now
        assert inspect_queues(kit.settings, [queues.DEFAULT])[0].consumers == 2
        wait_for(lambda: notify.seen("WATCHDOG=1"), timeout=5, what="WATCHDOG=1")
        kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(10)])
        wait_for(lambda: any("STATUS=2/2 children" in m and "10 done" in m for m in notify.poll()), timeout=20,
                 what="a STATUS line with live counters")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert notify.seen("STOPPING=1")
        assert ready_after < 10
    finally:
        notify.close()


def test_status_and_metrics_show_children_and_counters(kit):
    from support.rabbit import free_port

    port = free_port()
    worker = kit.worker("-Q", "default,amr", "-c", "2", "--threads", "3", "--metrics-port", str(port))
    wait_for(lambda: ready_children(kit) == 2, timeout=30,
             what="two ready children")
    ids = kit.app.send_tasks([TaskCall("test.record", [i]) for i in range(25)])
    wait_for(lambda: set(ran_counts(kit.sink)) >= set(ids), timeout=30, what="tasks")
    wait_for(lambda: status(kit)["workers"][0]["totals"]["done"] == 25, timeout=10, what="counters in status")
    doc = status(kit)
    w = doc["workers"][0]
    assert w["pid"] == worker.pid and w["pools"][0]["threads"] == 3
    assert {c["pid"] for c in w["children"]} == set(children_of(worker.pid))
    assert all(c["rss"] is None or c["rss"] > 0 for c in w["children"])
    assert {q["name"]: q["consumers"] for q in doc["queues"]} == {queues.DEFAULT: 2, queues.AMR: 2}
    text = cli(kit, "status").stdout
    assert f"pid {worker.pid}" in text and "25 done" in text
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'utilitarian_tasks_total{worker=' in body and 'task="test.record",outcome="done"} 25' in body
    assert "utilitarian_task_duration_seconds_bucket" in body
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert cli(kit, "status").returncode == 3  # nobody answers any more


def test_dlq_list_replay_purge(kit):
    doomed = kit.app.send_tasks([TaskCall("test.always_fails") for _ in range(3)])
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "3")
    wait_for(lambda: inspect_queues(kit.settings, [queues.DEAD_LETTER])[0].messages == 3, timeout=30,
             what="three dead letters")
    listed = json.loads(cli(kit, "dlq", "list", "--json").stdout)
    assert sorted(m["id"] for m in listed) == sorted(doomed)
    assert all(m["reason"] == "failed after 3 attempts" and m["queue"] == queues.DEFAULT for m in listed)
    assert inspect_queues(kit.settings, [queues.DEAD_LETTER])[0].messages == 3  # listing keeps them
    # replay one task name's letters: they run again with a fresh budget and come back dead
    out = cli(kit, "dlq", "replay", "--task", "test.always_fails", "--limit", "1")
    assert out.returncode == 0 and "1 dead letter(s) replayed" in out.stdout
    wait_for(lambda: inspect_queues(kit.settings, [queues.DEAD_LETTER])[0].messages == 3, timeout=30,
             what="the replayed task to fail again")
    out = cli(kit, "dlq", "purge", "--queue", "amr")
    assert "0 dead letter(s) purged" in out.stdout
    out = cli(kit, "dlq", "purge")
    assert "3 dead letter(s) purged" in out.stdout
    assert inspect_queues(kit.settings, [queues.DEAD_LETTER])[0].messages == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
