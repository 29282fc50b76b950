"""A real Celery 5 producer, configured as README says, publishes to classic and to quorum queues,
and our worker consumes its messages the same way on both: every task once, typed arguments
decoded, `countdown` and `eta` tasks run at (not before) their ETA. On quorum queues Celery's own
"native delayed delivery" does not apply (our queues have direct exchanges, which Celery skips with
a warning), so its delayed messages carry their `eta` header and our worker waits them out in the
delay levels, as on classic queues. A producer left with Celery's default (classic) settings gets
a loud 406 on a quorum queue, never a silent loss.

Runs on the test broker (a single node: quorum queues of one replica behave the same for a
producer and a consumer); failover is tested on the cluster in test_failover.py."""

from __future__ import annotations

import datetime as dt
import signal
from decimal import Decimal

import pytest

from support.cluster import celery_producer, write_config
from support.cluster_tasks import runs
from support.procs import Proc, wait_for
from utilitarian import queues
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology
from utilitarian.supervisor.runner import ETA_SLACK

UTC = dt.timezone.utc


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_celery_producer_messages_run_the_same_on_either_queue_type(queue_type, rabbit, vhost, tmp_path):
    url = rabbit.url_for(vhost)
    declare_topology(settings_from_url(url, queue_type=queue_type))
    sink = tmp_path / "sink.jsonl"
    config = write_config(tmp_path / "u.toml", url, queue_type=queue_type)
    worker = Proc(["worker", "--config", str(config), "-I", "support.cluster_tasks", "-Q", "default,amr", "-c", "1",
                   "--threads", "4"], env={"UTIL_TEST_SINK": str(sink)}, log=tmp_path / "worker.log")
    app = celery_producer(url, queue_type, [queues.DEFAULT, queues.AMR])
    try:
        # Given a Celery producer sending plain, typed, countdown, eta and expiring tasks to two queues
        when = dt.datetime(2026, 11, 24, 12, 30, tzinfo=UTC)
        sent_at = dt.datetime.now(UTC)
        sent = {
            "plain": app.send_task("cluster_test.record", args=[1, "two"], queue=queues.DEFAULT),
            "typed": app.send_task("cluster_test.record", args=[Decimal("12.345")], kwargs={"at": when},
                                   queue=queues.AMR),
            "countdown": app.send_task("cluster_test.record", args=["later"], countdown=2, queue=queues.DEFAULT),
            "eta": app.send_task("cluster_test.record", args=["at eta"], eta=sent_at + dt.timedelta(seconds=3),
                                 queue=queues.AMR),
            "expires": app.send_task("cluster_test.record", args=["soon"], expires=3600, queue=queues.DEFAULT),
        }
        ids = {kind: result.id for kind, result in sent.items()}
        # When our worker consumes both queues
        wait_for(lambda: {r["id"] for r in runs(sink)} >= set(ids.values()), timeout=60, interval=0.1,
                 what="every Celery task to run")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()[-3000:]
        # Then each ran exactly once, with its arguments, on its queue, delayed ones not before their ETA
        by_id = {}
        for r in runs(sink):
            assert r["id"] not in by_id, f"{r['id']} ran twice"
            by_id[r["id"]] = r
        assert set(by_id) == set(ids.values())
        assert by_id[ids["plain"]]["args"] == [1, "two"] and by_id[ids["plain"]]["queue"] == queues.DEFAULT
        assert by_id[ids["typed"]]["args"] == [{"type": "Decimal", "value": "12.345"}]
        assert by_id[ids["typed"]]["kwargs"] == {"at": {"type": "datetime", "value": when.isoformat()}}
        for kind, seconds in (("countdown", 2), ("eta", 3)):
            run = by_id[ids[kind]]
            eta = dt.datetime.fromisoformat(run["eta"])
            assert eta >= sent_at + dt.timedelta(seconds=seconds - 0.5)
            # (the worker runs a task whose ETA is ETA_SLACK away rather than delay it once more)
            assert run["at"] >= eta.timestamp() - ETA_SLACK, f"{kind} ran {eta.timestamp() - run['at']:.2f}s early"
        assert by_id[ids["eta"]]["queue"] == queues.AMR
    finally:
        worker.kill_tree()
        app.close()


def test_celery_default_settings_on_quorum_queues_fail_loudly(rabbit, vhost):
    # Given quorum queues and a producer still on Celery's defaults (it declares classic queues)
    url = rabbit.url_for(vhost)
    declare_topology(settings_from_url(url, queue_type="quorum"))
    app = celery_producer(url, "classic", [])
    try:
        # Then sending fails with the broker's 406 instead of dropping the task
        with pytest.raises(Exception, match="PRECONDITION_FAILED|inequivalent arg 'x-queue-type'"):
            app.send_task("cluster_test.record", queue=queues.DEFAULT)
    finally:
        app.close()
