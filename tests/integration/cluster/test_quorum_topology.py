"""Quorum queues on the test broker (one node, one replica each): `topology show` says each queue's
type; a worker, a beat or `topology declare` meeting queues of the other type stops with exit 78 and a
message naming the queue and the way out; a poison message is dead-lettered after max_deliveries
on quorum queues (counted by the broker) as on classic ones; the beat's state queue as a quorum queue keeps only
the newest state after a leader read it (requeue) and wrote a new one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pika
import pytest

from support.cluster import write_config
from support.cluster_tasks import runs
from support.procs import REPO, Proc, wait_for
from utilitarian import queues
from utilitarian.app import App, TaskCall
from utilitarian.beat.state import STATE_QUEUE, declare_state_queue, read_state
from utilitarian.broker import redeliver
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology, inspect_queues
from utilitarian.config import load_config


def cli(config, *args):
    return subprocess.run([sys.executable, "-m", "utilitarian", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_topology_show_says_each_queues_type(broker_url, tmp_path):
    config = write_config(tmp_path / "u.toml", broker_url, queue_type="quorum")
    assert cli(config, "topology", "declare").returncode == 0
    shown = cli(config, "topology", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert {q["type"] for q in json.loads(shown.stdout)} == {"quorum"}
    # the same vhost seen through a classic config: shown as quorum, flagged, exit 1
    classic = write_config(tmp_path / "c.toml", broker_url, queue_type="classic")
    shown = cli(classic, "topology", "show")
    assert shown.returncode == 1
    assert "utilitarian.tasks.amr.on_demand" in shown.stdout and "not the configured type" in shown.stdout


@pytest.mark.parametrize("existing, configured", [("classic", "quorum"), ("quorum", "classic")])
def test_queues_of_the_other_type_stop_worker_beat_and_declare_with_78(existing, configured, broker_url, tmp_path):
    declare_topology(settings_from_url(broker_url, queue_type=existing))
    config = write_config(tmp_path / "u.toml", broker_url, queue_type=configured)
    declared = cli(config, "topology", "declare")
    assert declared.returncode == 78
    assert f"exists as a {existing} queue" in declared.stderr and f'queue_type = "{configured}"' in declared.stderr
    assert ("topology migrate --to quorum" if configured == "quorum" else 'set [broker] queue_type = "quorum"') \
        in declared.stderr
    assert "Traceback" not in declared.stderr
    worker = Proc(["worker", "--config", str(config), "-c", "1", "--threads", "2"], log=tmp_path / "worker.log")
    beat = Proc(["beat", "--config", str(config)], log=tmp_path / "beat.log")
    try:
        for proc in (worker, beat):
            assert proc.wait(60) == 78
            out = proc.output()
            assert f"exists as a {existing} queue" in out and "Traceback" not in out
    finally:
        worker.kill_tree()
        beat.kill_tree()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_poison_is_dead_lettered_after_max_deliveries(queue_type, broker_url, tmp_path):
    settings = settings_from_url(broker_url, queue_type=queue_type)
    declare_topology(settings)
    sink = tmp_path / "sink.jsonl"
    config = write_config(tmp_path / "u.toml", broker_url, "[worker]\nmax_deliveries = 3\n", queue_type=queue_type)
    app = App(load_config(str(config)), name="poison producer")
    try:
        [poison] = app.send_tasks([TaskCall("cluster_test.die", queue="default")])
        ids = app.send_tasks([TaskCall("cluster_test.record", [i], queue="default") for i in range(20)])
    finally:
        app.close()
    # One thread: a sibling delivered with the poison dies with it and is counted too (on both
    # queue types: the count cannot tell the killer from the bystander), which is not under test.
    worker = Proc(["worker", "--config", str(config), "-I", "support.cluster_tasks", "-Q", "default", "-c", "1",
                   "--threads", "1", "--prefetch-multiplier", "1"], env={"UTIL_TEST_SINK": str(sink)}, log=tmp_path / "worker.log")
    try:
        wait_for(lambda: inspect_queues(settings, [queues.DEAD_LETTER])[0].messages >= 1, timeout=120,
                 what="the poison message in the dead-letter queue")
        wait_for(lambda: {r["id"] for r in runs(sink)} >= set(ids), timeout=60, what="the other tasks to run")
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            _method, props, _body = connection.channel().basic_get(queues.DEAD_LETTER, auto_ack=True)
        finally:
            connection.close()
        assert inspect_queues(settings, [queues.DEAD_LETTER])[0].messages == 0  # the poison, nothing else
        assert props.headers["id"] == poison
        assert props.headers[redeliver.DEAD_REASON] == "poison"
        assert props.headers[redeliver.DEAD_ATTEMPTS] == 4  # killed its child 3 times, refused at the 4th
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()[-3000:]
    finally:
        worker.kill_tree()


def test_beat_state_queue_as_quorum_keeps_the_newest_state(broker_url):
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        declare_state_queue(channel, "quorum")
        channel.confirm_delivery()
        channel.basic_publish("", STATE_QUEUE, b"older", pika.BasicProperties(delivery_mode=2))
        # Given a leader that read the state (get, then requeue) and commits a newer one in a transaction
        assert read_state(channel).entries == {}  # b"older" is no valid state: read as empty, requeued
        tx = connection.channel()
        tx.tx_select()
        tx.basic_publish("", STATE_QUEUE, b"newer", pika.BasicProperties(delivery_mode=2))
        tx.tx_commit()
        # Then only the newer state is left (drop-head dropped the requeued one)
        wait_for(lambda: channel.queue_declare(STATE_QUEUE, passive=True).method.message_count == 1, timeout=10,
                 what="one state message")
        method, _props, body = channel.basic_get(STATE_QUEUE, auto_ack=True)
        assert body == b"newer"
        assert channel.basic_get(STATE_QUEUE, auto_ack=True)[0] is None
    finally:
        connection.close()
