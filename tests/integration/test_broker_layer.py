"""The broker layer against a real RabbitMQ: topology, pipelined confirms, returns, delays,
refused credentials and an unreachable broker."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import pika
import pytest

from utilitarian import queues
from utilitarian.app import App, TaskCall
from utilitarian.broker.connection import connect_blocking, settings_from_url
from utilitarian.broker.publisher import ConfirmedPublisher, Outgoing
from utilitarian.broker.topology import declare_topology, inspect_queues
from utilitarian.config import parse_config
from utilitarian.errors import AuthenticationRefused, PublishError
from utilitarian.protocol import decode

UTC = dt.timezone.utc


def app_for(url: str) -> App:
    return App(parse_config({"broker": {"url": url}, "beat": {"builtin_schedules": False}}))


def get_all(url: str, queue: str, expect: int, timeout: float = 10.0) -> list:
    """Drain `queue` until `expect` messages arrived or the timeout passed."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        out.append((props, body, time.monotonic()))
    conn.close()
    return out


def test_topology_is_idempotent_and_complete(broker_settings):
    declare_topology(broker_settings)
    declare_topology(broker_settings)
    states = inspect_queues(broker_settings, list(queues.QUEUES) + [queues.DEAD_LETTER])
    assert len(states) == 15
    assert all(s.messages == 0 for s in states)


def test_pipelined_confirms_publish_10000(broker_settings, broker_url):
    declare_topology(broker_settings)
    app = app_for(broker_url)
    try:
        ids = app.send_tasks([TaskCall("utilitarian.ping", [i]) for i in range(10_000)])
    finally:
        app.close()
    assert len(set(ids)) == 10_000
    state = inspect_queues(broker_settings, [queues.DEFAULT])[0]
    assert state.messages == 10_000


def test_unroutable_publish_is_an_error(broker_settings):
    declare_topology(broker_settings)
    with ConfirmedPublisher(broker_settings) as pub:
        pub.publish(Outgoing("", queues.DEFAULT, b"{}", {"delivery_mode": 2}))
        with pytest.raises(PublishError, match="unroutable"):
            pub.publish_many([Outgoing("", queues.DEFAULT, b"{}"), Outgoing("", "no.such.queue", b"{}")])
        # the publisher stays usable after a returned message
        pub.publish(Outgoing("", queues.DEFAULT, b"{}"))


def test_countdown_arrives_after_2s_not_after_3s(broker_settings, broker_url):
    declare_topology(broker_settings)
    app = app_for(broker_url)
    try:
        sent = time.monotonic()
        task_id = app.send_task("utilitarian.ping", countdown=2.0, queue="default")
    finally:
        app.close()
    # Given a consumer that connects late (1.5 s after the publish)
    time.sleep(1.5)
    got = get_all(broker_url, queues.DEFAULT, 1, timeout=5)
    assert len(got) == 1
    props, body, arrived = got[0]
    assert 2.0 <= arrived - sent <= 3.0
    msg = decode(body, content_type=props.content_type, content_encoding=props.content_encoding,
                 headers=props.headers)
    assert msg.id == task_id and msg.eta is not None


def test_delayed_message_survives_connection_drops(rabbit, vhost, broker_settings, broker_url):
    declare_topology(broker_settings)
    app = app_for(broker_url)
    try:
        sent = time.monotonic()
        app.send_task("utilitarian.ping", countdown=2.0, queue="amr")
        rabbit.close_connections(vhost)  # the publisher's connection, and any other, dropped
        app.send_task("utilitarian.ping", countdown=0.5, queue="amr")  # reconnects by itself
    finally:
        app.close()
    got = get_all(broker_url, queues.AMR, 2, timeout=6)
    assert len(got) == 2
    assert got[-1][2] - sent >= 2.0


def test_refused_credentials_raise_authentication_refused(rabbit, vhost):
    settings = settings_from_url(rabbit.url_for(vhost, password="wrong-password"))
    started = time.monotonic()
    with pytest.raises(AuthenticationRefused) as err:
        connect_blocking(settings)
    assert time.monotonic() - started < 10
    assert "wrong-password" not in str(err.value)


def test_call_cli_with_wrong_password_exits_78(rabbit, vhost, tmp_path):
    cfg = tmp_path / "u.toml"
    cfg.write_text(f'[broker]\nurl = "{rabbit.url_for(vhost, password="hunter2")}"\n')
    proc = subprocess.run([sys.executable, "-m", "utilitarian", "call", "utilitarian.ping", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "hunter2" not in proc.stderr and "refused" in proc.stderr


def test_unreachable_broker_is_retried_with_masked_password(tmp_path):
    from support.rabbit import free_port

    cfg = tmp_path / "u.toml"
    cfg.write_text(f'[broker]\nurl = "amqp://u:supersecret@127.0.0.1:{free_port()}/"\nretry_backoff_max = 0.5\n'
                   "connection_timeout = 1.0\n")
    proc = subprocess.run([sys.executable, "-m", "utilitarian", "call", "utilitarian.ping", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 69
    assert "supersecret" not in proc.stderr
    assert proc.stderr.count("retrying in") >= 2
