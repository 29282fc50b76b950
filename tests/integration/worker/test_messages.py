"""What arrives on a queue and how the worker settles it: the poison corpus is dead-lettered with
reasons while the worker goes on; retries keep the task id; Celery ETAs wait in the delay levels."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import signal
import time

import pika

from support.procs import ran_counts, read_sink, wait_for
from utilitarian import queues
from utilitarian.broker import redeliver
from utilitarian.broker.topology import inspect_queues
from utilitarian.protocol import encode_task

UTC = dt.timezone.utc


def publish_raw(url: str, body: bytes, **props) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", queues.DEFAULT, body, pika.BasicProperties(delivery_mode=2, **props))
    conn.close()


def drain_dead_letters(url: str, expect: int, timeout: float = 30.0) -> list:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        method, props, body = ch.basic_get(queues.DEAD_LETTER, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        out.append((props, body))
    conn.close()
    return out


def good_headers(**extra) -> dict:
    env = encode_task("test.record", [1], {})
    return {**env.properties["headers"], **extra}


def test_poison_corpus_is_dead_lettered_with_reasons_and_the_worker_goes_on(kit):
    url = kit.broker_url
    json_ct = {"content_type": "application/json", "content_encoding": "utf-8"}
    triple = json.dumps([[1], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    corpus = {
        "content_type": (pickle.dumps(([1], {}, {})), {"content_type": "application/x-python-serialize",
                                                       "content_encoding": "binary", "headers": good_headers()}),
        "protocol_v1": (json.dumps({"task": "test.record", "id": "v1", "args": [], "kwargs": {}}).encode(),
                        {**json_ct, "headers": {}}),
        "undecodable_body": (b'[[1], {"unterminated', {**json_ct, "headers": good_headers()}),
        "unknown_task": (triple, {**json_ct, "headers": good_headers(task="no.such.task")}),
        "workflow_embed": (json.dumps([[1], {}, {"callbacks": [{"task": "x"}], "errbacks": None, "chain": None,
                                                  "chord": None}]).encode(), {**json_ct, "headers": good_headers()}),
        "expired": (triple, {**json_ct, "headers": good_headers(
            expires=(dt.datetime.now(UTC) - dt.timedelta(minutes=1)).isoformat())}),
        "content_encoding": (triple, {"content_type": "application/json", "content_encoding": "binary",
                                      "headers": good_headers()}),
        "missing_header": (triple, {**json_ct, "headers": {"lang": "py"}}),
        "too_large": (b"[" + b" " * (10 * 1024 * 1024) + b"[], {}, {}]", {**json_ct, "headers": good_headers()}),
    }
    for body, props in corpus.values():
        publish_raw(url, body, **props)
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "4")
    dead = drain_dead_letters(url, len(corpus))
    reasons = sorted(props.headers[redeliver.DEAD_REASON] for props, _ in dead)
    assert reasons == sorted(corpus)
    for props, body in dead:
        assert props.headers[redeliver.DEAD_QUEUE] == queues.DEFAULT
        assert props.headers[redeliver.DEAD_ERROR]
        assert props.headers[redeliver.DEAD_ATTEMPTS] == 1
        assert body == corpus[props.headers[redeliver.DEAD_REASON]][0]  # the original, untouched
    # and the worker is still consuming
    task_id = kit.app.send_task("test.record", [2])
    wait_for(lambda: task_id in ran_counts(kit.sink), timeout=20, what="a good task after the corpus")
    assert ran_counts(kit.sink) == {task_id: 1}
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_retries_keep_the_id_and_end_in_the_dead_letter_queue(kit):
    flaky = kit.app.send_task("test.flaky", [], {"fail_times": 2})
    doomed = kit.app.send_task("test.always_fails")
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "4")
    wait_for(lambda: flaky in ran_counts(kit.sink), timeout=30, what="the flaky task to succeed")
    attempts = [what for tid, _, what in read_sink(kit.sink) if tid == flaky]
    assert attempts == ["attempt0", "attempt1", "attempt2", "ran"]
    dead = drain_dead_letters(kit.broker_url, 1)
    assert len(dead) == 1
    props, _ = dead[0]
    assert props.headers["id"] == doomed and props.headers["retries"] == 2
    assert props.headers[redeliver.DEAD_REASON] == "failed after 3 attempts"
    assert "ValueError: meter said no" in props.headers[redeliver.DEAD_ERROR]
    assert props.headers[redeliver.DEAD_ATTEMPTS] == 3
    # the task's on_failure hook ran once, when the worker gave up
    assert [w for tid, _, w in read_sink(kit.sink) if tid == doomed] == ["attempt0", "attempt1", "attempt2",
                                                                         "gave_up2"]
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_celery_style_eta_is_not_held_unacked(kit):
    # Given a consuming worker (the ETA counts from here: a slow start on a loaded machine must
    # not let the ETA pass before the worker ever saw the message)
    worker = kit.worker("-Q", "default", "-c", "1", "--threads", "2")
    wait_for(lambda: inspect_queues(kit.settings, [queues.DEFAULT])[0].consumers == 1, timeout=60,
             what="the worker to consume")
    # When a producer publishes straight to the queue with a future ETA (as Celery does)
    eta = dt.datetime.now(UTC) + dt.timedelta(seconds=6)
    env = encode_task("test.record", [1], {}, eta=eta)
    publish_raw(kit.broker_url, env.body, **{k: v for k, v in env.properties.items() if k != "delivery_mode"})
    # Then the worker hands it to the delay levels: the queue holds nothing, not even unacked,
    # while it waits, and the task has not run
    wait_for(lambda: inspect_queues(kit.settings, [queues.DEFAULT])[0].messages == 0, timeout=10,
             what="the message to leave the queue")
    # And it does not run before its ETA (watched until just before it) ...
    while dt.datetime.now(UTC) < eta - dt.timedelta(seconds=0.2):
        assert env.task_id not in ran_counts(kit.sink)
        time.sleep(0.1)
    # ... but runs once it is due
    wait_for(lambda: env.task_id in ran_counts(kit.sink), timeout=20, what="the task at its ETA")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
