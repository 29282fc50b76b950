"""Wire compatibility with the real Celery 5 in both directions, and topology that coexists with
what a Celery producer declares."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pika
import pytest

from support.procs import TESTS, wait_for
from utilitarian import queues
from utilitarian.broker.topology import declare_topology, inspect_queues
from utilitarian.protocol import decode

UTC = dt.timezone.utc


@pytest.fixture
def celery_app(broker_url):
    from celery import Celery

    app = Celery("producer", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    broker_transport_options={"confirm_publish": True})
    yield app
    app.close()


def get_one(url: str, queue: str, timeout: float = 10.0):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return props, body
            time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"nothing arrived on {queue}")


def _consumers(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def test_celery_producer_message_decodes_exactly(celery_app, broker_url):
    when = dt.datetime(2026, 11, 24, 12, 30, 15, 250000, tzinfo=UTC)
    before = dt.datetime.now(UTC)
    result = celery_app.send_task(
        "amr.execute_meter_task", args=[42, Decimal("12.345"), when], kwargs={"slot": when, "v": Decimal("0.1")},
        queue=queues.AMR_DAILY, countdown=30, expires=3600, time_limit=120, soft_time_limit=60)
    props, body = get_one(broker_url, queues.AMR_DAILY)
    msg = decode(body, content_type=props.content_type, content_encoding=props.content_encoding,
                 headers=props.headers)
    assert msg.task == "amr.execute_meter_task" and msg.id == result.id
    assert msg.args == (42, Decimal("12.345"), when)
    assert msg.kwargs == {"slot": when, "v": Decimal("0.1")}
    assert before + dt.timedelta(seconds=30) <= msg.eta <= dt.datetime.now(UTC) + dt.timedelta(seconds=30)
    assert before + dt.timedelta(seconds=3600) <= msg.expires <= dt.datetime.now(UTC) + dt.timedelta(seconds=3600)
    assert (msg.time_limit, msg.soft_time_limit) == (120, 60)
    assert props.correlation_id == result.id


def test_utilitarian_call_is_run_by_a_real_celery_worker(broker_url, tmp_path):
    out = tmp_path / "celery-out.jsonl"
    config = tmp_path / "u.toml"
    config.write_text(f'[broker]\nurl = "{broker_url}"\n[beat]\nbuiltin_schedules = false\n')
    env = {**os.environ, "PYTHONPATH": str(TESTS), "CELERY_PEER_BROKER": broker_url, "CELERY_PEER_OUT": str(out)}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "support.celery_peer", "worker", "-P", "solo",
                               "-Q", queues.DEFAULT, "--without-gossip", "--without-mingle", "--without-heartbeat",
                               "-l", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: _consumers(broker_url, queues.DEFAULT) >= 1, timeout=60, what="the Celery worker to consume")
        args = json.dumps([1, "two", {"three": 3}])
        proc = subprocess.run([sys.executable, "-m", "utilitarian", "call", "peer.record", "--config", str(config),
                               "--queue", "default", "--args", args, "--kwargs", '{"meter": "m-1"}'],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        task_id = proc.stdout.strip()
        uuid.UUID(task_id)
        # and a Decimal/datetime through our Python API
        from utilitarian.app import App
        from utilitarian.config import load_config

        app = App(load_config(str(config)))
        when = dt.datetime(2026, 1, 31, 23, 59, tzinfo=UTC)
        typed_id = app.send_task("peer.record", [Decimal("7.25")], {"at": when}, queue="default")
        delayed_id = app.send_task("peer.record", ["later"], countdown=1.0, queue="default")
        app.close()
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, timeout=60,
                 what="the Celery worker to run three tasks")
        runs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert runs[task_id]["args"] == [1, "two", {"three": 3}] and runs[task_id]["kwargs"] == {"meter": "m-1"}
        assert runs[typed_id]["args"] == [{"type": "Decimal", "value": "7.25"}]
        assert runs[typed_id]["kwargs"] == {"at": {"type": "datetime", "value": when.isoformat()}}
        assert runs[delayed_id]["args"] == ["later"]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_topology_coexists_with_celery_declarations(celery_app, broker_settings, broker_url):
    # Given a Celery producer that declared two of our queues first (its default declaration)
    celery_app.send_task("x", queue=queues.DEFAULT)
    celery_app.send_task("x", queue=queues.AMR_HOURLY)
    # When we declare everything, twice, there is no 406 PRECONDITION_FAILED
    declare_topology(broker_settings)
    declare_topology(broker_settings)
    # and Celery can declare again after us and publish through its own exchange binding
    celery_app.send_task("y", queue=queues.AMR_HOURLY)
    depth = {s.name: s.messages for s in inspect_queues(broker_settings, [queues.DEFAULT, queues.AMR_HOURLY])}
    assert depth == {queues.DEFAULT: 1, queues.AMR_HOURLY: 2}
