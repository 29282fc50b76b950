"""`utilitarian topology migrate --to quorum` on a live installation, following the procedure of
docs/operations.md ("A RabbitMQ cluster"): while a real Celery producer keeps publishing (plain and
countdown tasks), the migration runs, a worker and a beat start on the new quorum vhost, the old
beat and worker stop, the producer switches over, and the migration ends once the old vhost is
drained. Every task the producer sent runs (none lost), countdown tasks not before their ETA, and
every beat slot fires exactly once across the switch (the beat state was moved).

Runs on the test broker: a migration between vhosts is the same on one node as on a cluster."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import threading
import time

from support.beat_harness import contiguous_seconds
from support.cluster import celery_producer, write_config
from support.cluster_tasks import runs
from support.procs import Proc, wait_for
from utilitarian import queues
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.migrate import source_queues
from utilitarian.broker.topology import declare_topology, inspect_queues
from utilitarian.supervisor.runner import ETA_SLACK


UTC = dt.timezone.utc
TICK = """
[worker]
imports = ["support.cluster_tasks"]

[schedule.every-second]
cron = "* * * * * *"
task = "cluster_test.record"
queue = "default"
coalesce = false
misfire_grace = 60.0
slot_kwarg = "slot"
"""
BEAT = "retry_interval = 0.5\nretry_jitter = 0.2"


class Producer(threading.Thread):
    """A Celery producer publishing without pause; `switch(url, queue_type)` moves it over."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.app = celery_producer(url, "classic", [])
        self.sent: list[tuple[str, str, float | None, float]] = []  # (id, vhost tag, countdown, sent at)
        self.where = "old"
        self.running = True
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        n = 0
        try:
            while self.running:
                with self.lock:
                    app, where = self.app, self.where
                countdown = 3.0 if n % 10 == 0 else None
                queue = queues.DEFAULT if n % 2 else queues.AMR
                result = app.send_task("cluster_test.record", args=[n], countdown=countdown, queue=queue)
                self.sent.append((result.id, where, countdown, time.time()))
                n += 1
                time.sleep(0.01)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def switch(self, url: str, queue_type: str) -> None:
        new = celery_producer(url, queue_type, [queues.DEFAULT, queues.AMR])
        with self.lock:
            old, self.app, self.where = self.app, new, "new"
        old.close()

    def stop(self) -> None:
        self.running = False
        self.join(30)
        self.app.close()


def test_migrate_to_quorum_while_a_celery_producer_keeps_publishing(rabbit, vhost, tmp_path, figures):
    old_url = rabbit.url_for(vhost)
    new_vhost = rabbit.add_vhost("migrated")
    new_url = rabbit.url_for(new_vhost)
    declare_topology(settings_from_url(old_url))
    sink = tmp_path / "sink.jsonl"
    old_cfg = write_config(tmp_path / "old.toml", old_url, TICK, queue_type="classic", beat=BEAT, name="old")
    new_cfg = write_config(tmp_path / "new.toml", new_url, TICK, queue_type="quorum", beat=BEAT, name="new")
    procs: dict[str, Proc] = {}
    env = {"UTIL_TEST_SINK": str(sink)}

    def start(name, *args):
        procs[name] = Proc([*args], env=env, log=tmp_path / f"{name}.log")
        return procs[name]

    def stop(name, timeout=60):
        procs[name].signal(signal.SIGTERM)
        code = procs[name].wait(timeout)
        assert code == 0, f"{name} exited {code}:\n{procs[name].output()[-3000:]}"

    def worker(cfg):
        return ["worker", "--config", str(cfg), "-c", "1", "--threads", "8"]

    producer = Producer(old_url)
    try:
        # Given a live classic installation: worker, beat and a Celery producer on the old vhost
        start("old-worker", *worker(old_cfg))
        start("old-beat", "beat", "--config", str(old_cfg))
        producer.start()
        wait_for(lambda: len(runs(sink)) >= 100 and sum(1 for r in runs(sink) if "slot" in r["kwargs"]) >= 3,
                 timeout=120, what="the old installation to run 100 tasks and 3 beat slots")
        # When the migration runs, a worker starts on the new quorum vhost, the old beat stops,
        # the new beat starts once the state moved, the old worker stops, the producer switches
        migrate = start("migrate", "topology", "migrate", "--config", str(new_cfg), "--to", "quorum",
                        "--from-vhost", vhost)
        start("new-worker", *worker(new_cfg))
        stop("old-beat")
        old = settings_from_url(old_url)
        new = settings_from_url(new_url, queue_type="quorum")
        wait_for(lambda: (inspect_queues(old, ["utilitarian.beat.state"])[0].messages == 0
                          and inspect_queues(new, ["utilitarian.beat.state"])[0].messages == 1),
                 timeout=60, what="the beat state to move to the new vhost")
        start("new-beat", "beat", "--config", str(new_cfg))
        stop("old-worker")
        old_stopped = time.time()
        time.sleep(1.0)  # the producer keeps sending to the old vhost with nobody consuming there
        producer.switch(new_url, "quorum")
        time.sleep(1.5)
        producer.stop()
        assert producer.error is None, producer.error
        # Then the old vhost drains (nothing waiting, nobody consuming, no beat), the migration ends
        wait_for(lambda: all(not s.messages and not s.consumers for s in inspect_queues(old, source_queues())
                             if s.messages is not None), timeout=60, what="the old vhost to drain")
        time.sleep(4.0)  # a few more slots from the new beat
        stop("new-beat")
        stop("migrate")
        assert "the old vhost is drained" in migrate.output()
        check = start("check", "topology", "migrate", "--config", str(new_cfg), "--to", "quorum", "--from-vhost", vhost,
                      "--check")
        assert check.wait(60) == 0, check.output()
        assert "every task queue is quorum" in check.output()
        # and every task the producer sent ran, countdown ones not before their ETA
        sent = {task_id: (where, countdown, at) for task_id, where, countdown, at in producer.sent}
        wait_for(lambda: {r["id"] for r in runs(sink)} >= set(sent), timeout=120, interval=0.2,
                 what="every task the producer sent to run")
        stop("new-worker")
        ran = collections.Counter(r["id"] for r in runs(sink))
        for r in runs(sink):  # the worker runs a task whose ETA is ETA_SLACK away rather than delay it
            if r["id"] in sent and sent[r["id"]][1]:
                assert r["at"] >= dt.datetime.fromisoformat(r["eta"]).timestamp() - ETA_SLACK, r
        # (those sent to the old vhost after its worker stopped can only have run through the move)
        moved = [i for i, (where, _c, at) in sent.items() if where == "old" and at > old_stopped]
        assert len(moved) >= 10
        # and every beat slot fired once, with no gap across the switch
        fires = [r for r in runs(sink) if "slot" in r["kwargs"]]
        slots = collections.Counter(r["kwargs"]["slot"] for r in fires)
        assert max(slots.values()) == 1, [s for s, n in slots.items() if n > 1]
        assert contiguous_seconds(list(slots)) == []
        duplicates = sum(n - 1 for i, n in ran.items() if i in sent)
        figures.append(f"migrate classic -> quorum under a live Celery producer: {len(sent)} tasks sent "
                       f"({sum(1 for w, _c, _a in sent.values() if w == 'old')} to the old vhost, "
                       f"{sum(1 for _w, c, _a in sent.values() if c)} with countdown), lost 0, duplicates "
                       f"{duplicates}; {len(moved)} sent to the old vhost after its worker stopped ran through "
                       f"the move; {len(slots)} beat slots, each once")
    finally:
        producer.running = False
        for proc in procs.values():
            proc.kill_tree()
        rabbit.delete_vhost(new_vhost)
