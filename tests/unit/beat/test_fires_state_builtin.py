"""Fire messages (deterministic ids, slot header and kwarg, expiry, routing), the state format,
the built-in AMR table, and validation of entries against the task registry."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from utilitarian import queues
from utilitarian.beat.builtin import BUILTIN_SCHEDULES
from utilitarian.beat.cron import CronSchedule
from utilitarian.beat.fires import NAMESPACE, envelope_for, outgoing_fire, task_id_for
from utilitarian.beat.schedule import Entry, entries_from_config
from utilitarian.beat.state import BeatState, EntryState, decode_state, encode_state
from utilitarian.config import parse_config
from utilitarian.errors import ConfigError
from utilitarian.protocol import decode
from utilitarian.tasks import Registry

UTC = dt.timezone.utc
SLOT = dt.datetime(2024, 10, 27, 0, 30, tzinfo=UTC)


def amr_entry(**kw) -> Entry:
    base = dict(name="amr-daily", cron=CronSchedule("0 0 * * *"), task="amr.dispatch_schedule", queue=queues.AMR,
                kwargs={"schedule": "daily"}, slot_kwarg="slot")
    base.update(kw)
    return Entry(**base)


def test_task_id_is_uuid5_of_entry_and_utc_slot():
    expected = str(uuid.uuid5(NAMESPACE, "amr-daily|2024-10-27T00:30:00+00:00"))
    assert task_id_for("amr-daily", SLOT) == expected
    # the same instant written in another zone is the same slot
    assert task_id_for("amr-daily", SLOT.astimezone(dt.timezone(dt.timedelta(hours=2)))) == expected
    assert task_id_for("amr-daily", SLOT + dt.timedelta(seconds=1)) != expected
    assert task_id_for("amr-hourly", SLOT) != expected


def test_fire_message_is_a_celery_v2_task_with_slot_header_and_kwarg():
    env = envelope_for(amr_entry(expires=600.0), SLOT, leader="host:1/2")
    msg = decode(env.body, content_type=env.properties["content_type"],
                 content_encoding=env.properties["content_encoding"], headers=env.properties["headers"],
                 now=SLOT)
    assert msg.id == task_id_for("amr-daily", SLOT) and msg.task == "amr.dispatch_schedule"
    assert msg.kwargs == {"schedule": "daily", "slot": "2024-10-27T00:30:00+00:00"}
    assert msg.expires == SLOT + dt.timedelta(seconds=600)
    headers = env.properties["headers"]
    assert headers["utilitarian_schedule"] == "amr-daily"
    assert headers["utilitarian_slot"] == "2024-10-27T00:30:00+00:00"
    assert headers["utilitarian_leader"] == "host:1/2"
    assert env.properties["delivery_mode"] == 2


def test_fire_without_slot_kwarg_leaves_kwargs_alone_and_manual_fires_get_their_own_id():
    env = envelope_for(amr_entry(slot_kwarg=None, kwargs={}), SLOT, task_id="manual-1", manual=True)
    assert json.loads(env.body)[1] == {}
    assert env.task_id == "manual-1" and env.properties["headers"]["utilitarian_manual"] is True


def test_fire_goes_straight_to_its_queue():
    out = outgoing_fire(amr_entry(), SLOT, SLOT + dt.timedelta(seconds=0.01))
    assert (out.exchange, out.routing_key, out.mandatory) == ("", queues.AMR, True)


def test_state_round_trip_and_foreign_entries():
    s = BeatState({"a": EntryState(SLOT, "f1")}, foreign={"weird": {"done_until": 3}})
    body = encode_state(s, writer="h:1/1", now=SLOT)
    back = decode_state(body)
    assert back.entries == {"a": EntryState(SLOT, "f1")}
    assert back.foreign == {"weird": {"done_until": 3}}
    assert back.writer == "h:1/1" and back.written_at == SLOT
    doc = json.loads(body)
    assert doc["format"] == 1 and doc["entries"]["a"] == {"done_until": SLOT.isoformat(), "fingerprint": "f1"}


@pytest.mark.parametrize("body", [b"\xff", b"not json", b"[]", b'{"format": 99, "entries": {}}', b'{"format": 1}'])
def test_unreadable_state_counts_as_none(body, caplog):
    assert decode_state(body) == BeatState()
    assert "unreadable" in caplog.text


def test_builtin_table_has_the_six_amr_rounds_in_utc():
    expected = {"quarterly": "*/15 * * * *", "hourly": "0 * * * *", "daily": "0 0 * * *",
                "weekly": "0 0 * * 1", "monthly": "0 0 1 * *", "yearly": "0 0 1 1 *"}
    for name, cron in expected.items():
        table = BUILTIN_SCHEDULES[f"amr-{name}"]
        assert table["cron"] == cron
        assert table["task"] == "amr.dispatch_schedule"
        assert table["kwargs"] == {"schedule": name} and table["slot_kwarg"] == "slot"
        assert table["queue"] == queues.AMR and table["timezone"] == "UTC"
    cleanup = [n for n in BUILTIN_SCHEDULES if n.startswith("cleanup-")]
    assert cleanup and all(BUILTIN_SCHEDULES[n]["queue"] == queues.CLEANUP for n in cleanup)
    assert BUILTIN_SCHEDULES["cleanup-retention"]["cron"] == "15 3 * * *"


def test_toml_overrides_and_disables_builtin_entries():
    config = parse_config({"schedule": {"amr-hourly": {"cron": "5 * * * *"}, "amr-yearly": {"enabled": False}}})
    assert config.schedule["amr-hourly"].cron == "5 * * * *"
    assert config.schedule["amr-hourly"].queue == queues.AMR
    assert config.schedule["amr-yearly"].enabled is False
    assert config.schedule["amr-daily"].slot_kwarg == "slot"


def registry_for(config) -> Registry:
    return Registry.for_config(config)


def test_unknown_task_in_an_enabled_entry_names_entry_and_key():
    config = parse_config({"beat": {"builtin_schedules": False},
                           "schedule": {"nightly": {"cron": "0 2 * * *", "task": "utilitarian.pnig"}}})
    with pytest.raises(ConfigError) as err:
        entries_from_config(config, registry_for(config))
    assert err.value.exit_code == 78
    assert "schedule.nightly.task" in str(err.value) and "did you mean 'utilitarian.ping'" in str(err.value)


def test_builtin_entries_validate_and_fire_the_amr_dispatch_on_the_amr_queue():
    config = parse_config({})
    entries = {e.name: e for e in entries_from_config(config, registry_for(config))}
    assert {f"amr-{n}" for n in ("quarterly", "hourly", "daily", "weekly", "monthly", "yearly")} <= set(entries)
    daily = entries["amr-daily"]
    env = envelope_for(daily, dt.datetime(2025, 1, 1, tzinfo=UTC))
    assert json.loads(env.body)[1] == {"schedule": "daily", "slot": "2025-01-01T00:00:00+00:00"}
    assert daily.queue == queues.AMR and entries["cleanup-retention"].queue == queues.CLEANUP
    # a typo in an override of a built-in entry is caught with its key
    bad = parse_config({"schedule": {"amr-daily": {"task": "amr.dispatch_schedul"}}})
    with pytest.raises(ConfigError, match="schedule.amr-daily.task"):
        entries_from_config(bad, registry_for(bad))


def test_disabled_entry_with_unknown_task_is_fine_and_routes_come_from_the_registry():
    config = parse_config({
        "beat": {"builtin_schedules": False}, "worker": {"imports": ["support.beat_tasks"]},
        "tasks": {"utilitarian.sleep": {"queue": "cleanup"}},
        "schedule": {"off": {"cron": "0 2 * * *", "task": "no.such.task", "enabled": False},
                     "tick": {"cron": "* * * * * *", "task": "beat_test.tick"},
                     "nap": {"cron": "0 * * * *", "task": "utilitarian.sleep"},
                     "pinned": {"cron": "0 * * * *", "task": "utilitarian.ping", "queue": "external"}}})
    entries = {e.name: e for e in entries_from_config(config, registry_for(config))}
    assert set(entries) == {"tick", "nap", "pinned"}
    assert entries["tick"].queue == queues.AMR  # the decorator's queue
    assert entries["nap"].queue == queues.CLEANUP  # [tasks] override
    assert entries["pinned"].queue == queues.EXTERNAL  # the entry's own queue, short name resolved
