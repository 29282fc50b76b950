"""Quorum queues as a topology option, pure parts: the arguments each queue is declared with per
type, the delivery count read from the broker's x-delivery-count, the type-mismatch error, the
config key, and the migration's routing of moved messages."""

from __future__ import annotations

import types

import pytest

from utilitarian import queues
from utilitarian.beat.state import state_queue_arguments
from utilitarian.broker import delay, redeliver
from utilitarian.broker.connection import settings_from_config
from utilitarian.broker.migrate import copy_message, destination, is_drained, source_queues
from utilitarian.broker.topology import QueueTypeMismatch, marker_for, task_queue_arguments
from utilitarian.cli import main
from utilitarian.config import parse_config
from utilitarian.errors import EX_CONFIG


def props(headers=None, **fields):
    base = {name: None for name in ("content_type", "content_encoding", "delivery_mode", "priority",
                                    "correlation_id", "reply_to", "expiration", "timestamp", "type",
                                    "app_id", "user_id", "message_id")}
    return types.SimpleNamespace(**{**base, **fields, "headers": headers})


def test_task_queues_carry_only_the_type_celery_declares_too():
    assert task_queue_arguments("classic") == {}
    assert task_queue_arguments("quorum") == {"x-queue-type": "quorum"}


def test_quorum_delay_levels_dead_letter_at_least_once():
    classic = delay.level_arguments(3, "classic")
    quorum = delay.level_arguments(3, "quorum")
    assert classic == {"x-message-ttl": 800, "x-dead-letter-exchange": delay.level_exchange(2)}
    # at-least-once only works with reject-publish overflow (RabbitMQ falls back to at-most-once)
    assert quorum == {**classic, "x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                      "x-overflow": "reject-publish"}
    assert delay.level_arguments(0, "quorum")["x-dead-letter-exchange"] == delay.DELIVER_EXCHANGE


def test_beat_state_queue_keeps_one_message_in_both_types():
    assert state_queue_arguments("classic") == {"x-max-length": 1, "x-overflow": "drop-head"}
    assert state_queue_arguments("quorum") == {"x-max-length": 1, "x-overflow": "drop-head", "x-queue-type": "quorum"}


def test_each_type_has_its_own_marker():
    assert marker_for("classic") == "utilitarian.topology.v1"  # unchanged: existing brokers keep it
    assert marker_for("quorum") != marker_for("classic")


@pytest.mark.parametrize("headers, redelivered, expected", [
    ({}, False, 1),                                       # classic, first delivery
    ({}, True, 2),                                        # classic only has the flag
    ({"x-delivery-count": 0}, False, 1),                  # quorum: RabbitMQ 3.10 sets 0 on the first
    ({"x-delivery-count": 3}, True, 4),                   # quorum: three earlier deliveries
    ({"x-delivery-count": 1, redeliver.DELIVERIES: 4}, True, 5),  # a counted copy, redelivered once
    ({redeliver.DELIVERIES: 4}, False, 4),                # a counted copy, first delivery
    ({"x-delivery-count": "3"}, True, 2),                 # garbage from a producer: the flag decides
    ({"x-delivery-count": True}, True, 2),
])
def test_deliveries_use_the_broker_count_where_there_is_one(headers, redelivered, expected):
    assert redeliver.deliveries_of(props(headers), redelivered) == expected


def test_republished_copies_drop_the_broker_count():
    # A copy sent on (retry, count, dead letter) is a new message; a stale count would be read
    # again if it lands on a classic queue (the dead-letter queue of a classic vhost).
    p = props({"x-delivery-count": 4, "x-death": [{}], "id": "t1"}, delivery_mode=2)
    out = redeliver.dead_letter("q", b"body", p, reason="poison", error="e", attempts=5)
    assert "x-delivery-count" not in out.properties["headers"] and "x-death" not in out.properties["headers"]
    assert out.properties["headers"]["id"] == "t1"


def test_mismatch_names_the_queue_and_the_way_out_and_exits_78():
    up = QueueTypeMismatch(queues.AMR, "classic", "quorum")
    assert up.exit_code == EX_CONFIG
    assert queues.AMR in str(up) and "topology migrate --to quorum" in str(up)
    down = QueueTypeMismatch(queues.AMR, "quorum", "classic")
    assert 'queue_type = "quorum"' in str(down)


def test_queue_type_config_key(tmp_path, capsys):
    config = parse_config({"broker": {"url": "amqp://guest:guest@h1,h2,h3/v", "queue_type": "quorum"}})
    assert settings_from_config(config).queue_type == "quorum"
    assert settings_from_config(parse_config({})).queue_type == "classic"
    bad = tmp_path / "u.toml"
    bad.write_text('[broker]\nqueue_type = "mirrored"\n')
    assert main(["config", "check", "--config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "broker.queue_type: must be one of classic, quorum" in err and "Traceback" not in err


def test_level_names_and_routes():
    assert delay.level_of(delay.level_queue(0)) == 0 and delay.level_of(delay.level_queue(23)) == 23
    assert delay.level_of("utilitarian.delay.L24") is None and delay.level_of(queues.DEFAULT) is None
    key = delay.routing_key(queues.AMR_DAILY, 12.5)
    assert delay.target_of(key) == queues.AMR_DAILY
    assert delay.target_of("0.1.garbage") is None and delay.target_of(queues.DEFAULT) is None
    # a delay key given as the queue would be dropped by the broker at the last level: refused
    with pytest.raises(ValueError, match="is a delay routing key"):
        delay.route(key, 1.0)


def test_migration_sends_waiting_messages_straight_to_their_queue():
    key = delay.routing_key(queues.COMMITS, 600)
    assert destination(delay.level_queue(12), key) == ("", queues.COMMITS)
    assert destination(queues.AMR, queues.AMR) == ("", queues.AMR)
    assert destination(queues.DEAD_LETTER, queues.DEAD_LETTER) == ("", queues.DEAD_LETTER)
    # a level message whose route we cannot read is kept, in the dead letters, with the reason
    method = types.SimpleNamespace(routing_key="nonsense")
    out = copy_message(delay.level_queue(5), method, props({"id": "x"}, delivery_mode=2), b"b")
    assert out.routing_key == queues.DEAD_LETTER
    assert out.properties["headers"][redeliver.DEAD_REASON] == "migrate_unroutable"


def test_migration_copies_properties_but_not_what_the_old_broker_added():
    method = types.SimpleNamespace(routing_key=queues.DEFAULT)
    p = props({"id": "t", "x-delivery-count": 2, "x-death": [{}]}, content_type="application/json",
              content_encoding="utf-8", delivery_mode=2, correlation_id="t", expiration="60000", user_id="guest")
    out = copy_message(queues.DEFAULT, method, p, b"[]")
    assert (out.exchange, out.routing_key, out.body) == ("", queues.DEFAULT, b"[]")
    assert out.properties == {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2,
                              "correlation_id": "t", "expiration": "60000", "headers": {"id": "t"}}


def test_drained_means_no_message_no_consumer_no_beat():
    assert is_drained({"a": (0, 0), "b": (0, 0)})
    assert not is_drained({"a": (0, 0), "b": (1, 0)})
    assert not is_drained({"a": (0, 1)})  # a consumer may still return unacked deliveries
    assert not is_drained({"a": (0, 0)}, beat_leads=True)
    assert set(source_queues()) >= {*queues.QUEUES, queues.DEAD_LETTER, delay.level_queue(23), "utilitarian.beat.state"}
