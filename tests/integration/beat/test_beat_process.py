"""The beat as an operator meets it: refused credentials (exit 78), an unreachable broker (keeps
retrying, TERM exits 0), `schedule fire` by hand, and wall-clock jumps both ways (injected clock,
real broker): no duplicate fires, missed slots through the catch-up policy, the jump logged."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import signal
import threading
import time

from support.beat_harness import (BeatProcess, FireConsumer, contiguous_seconds, free_port_url, run_cli,
                                  slot_time, wait_until, write_config)
from utilitarian import queues
from utilitarian.beat.fires import task_id_for
from utilitarian.beat.loop import Beat
from utilitarian.beat.schedule import entries_from_config
from utilitarian.broker.topology import declare_topology
from utilitarian.config import load_config
from utilitarian.tasks import Registry

EVERY = {"cron": "* * * * * *", "task": "utilitarian.ping"}


def test_refused_credentials_exit_78(rabbit, vhost, tmp_path):
    url = rabbit.url_for(vhost, password="not-the-password")
    config = write_config(tmp_path / "beat.toml", url, {"every": EVERY})
    started = time.monotonic()
    result = run_cli("beat", "--config", str(config), timeout=30)
    assert result.returncode == 78, result.stderr
    assert time.monotonic() - started < 20
    assert "refused" in result.stderr and "not-the-password" not in result.stderr


def test_unreachable_broker_keeps_retrying_and_term_exits_0(tmp_path):
    config = write_config(tmp_path / "beat.toml", free_port_url(), {"every": EVERY})
    beat = BeatProcess(config, tmp_path / "beat.log", watchdog_usec=1_000_000)
    try:
        assert wait_until(lambda: beat.log_text().count("reconnecting in") >= 2, 20), beat.log_text()
        assert beat.proc.poll() is None
        # the loop is alive while it waits for the broker: the watchdog is fed, READY is not sent
        assert beat.notify.wait_for(lambda n: n.get("WATCHDOG") == "1", 5)
        assert not beat.notify.wait_for(lambda n: n.get("READY") == "1", 0.1)
        beat.signal(signal.SIGTERM)
        assert beat.wait_exit(3) == 0
    finally:
        beat.stop()


def test_schedule_fire_sends_one_fire_with_its_own_id(tmp_path, broker_url, broker_settings):
    declare_topology(broker_settings)
    consumer = FireConsumer(broker_url, [queues.AMR])
    entry = {"cron": "0 * * * *", "task": "beat_test.tick", "slot_kwarg": "slot", "kwargs": {"schedule": "hourly"}}
    config = write_config(tmp_path / "beat.toml", broker_url, {"tick": entry})
    try:
        result = run_cli("schedule", "fire", "tick", "--config", str(config))
        assert result.returncode == 0, result.stderr
        task_id, name, _slot, slot, _arrow, queue = result.stdout.split()
        fire = consumer.wait_for(lambda f: f.task_id == task_id, 10)
    finally:
        consumer.close()
    assert fire and name == "tick" and queue == queues.AMR
    now = dt.datetime.now(dt.timezone.utc)
    assert now - dt.timedelta(hours=1) < slot_time(slot) <= now and slot_time(slot).minute == 0
    assert fire.kwargs == {"schedule": "hourly", "slot": slot}
    assert task_id != task_id_for("tick", slot_time(slot))  # by hand: not the scheduled fire's id


def test_clock_jumps_fire_nothing_twice_and_follow_the_catch_up_policy(tmp_path, broker_url, broker_settings,
                                                                     caplog):
    entries = {
        "every": {**EVERY, "coalesce": False, "misfire_grace": 5.0},
        "coalesced": {**EVERY, "coalesce": True, "misfire_grace": 7200.0},
    }
    config = load_config(str(write_config(tmp_path / "beat.toml", broker_url, entries)))
    declare_topology(broker_settings)
    consumer = FireConsumer(broker_url, [queues.DEFAULT])
    offset = [0.0]
    beat = Beat(broker_settings, entries_from_config(config, Registry.for_config(config)),
                beat_config=config.beat, clock=lambda: time.time() + offset[0], identity="jumptest:1")
    codes = []
    runner = threading.Thread(target=lambda: codes.append(beat.run()), daemon=True)
    caplog.set_level(logging.INFO, logger="utilitarian.beat")
    runner.start()
    try:
        first = consumer.wait_for(lambda f: f.schedule == "every", 15)
        assert first
        assert consumer.wait_for(lambda f: f.schedule == "every" and slot_time(f.slot) >= slot_time(first.slot)
                                 + dt.timedelta(seconds=2), 5)

        # When the wall clock steps back 20 s (NTP), nothing fires for those 20 s of wall time
        offset[0] = -20.0
        stepped = time.monotonic()
        assert wait_until(lambda: "wall clock jumped -20" in caplog.text, 5)
        time.sleep(2.5)  # the observation window: slots already fired must not fire again
        assert [f for f in consumer.snapshot() if f.at > stepped + 0.5] == []

        # When it then leaps an hour ahead (suspend/resume)
        offset[0] = 3600.0
        leapt = time.monotonic()
        assert wait_until(lambda: "wall clock jumped +3620" in caplog.text, 5)
        assert consumer.wait_for(lambda f: f.at > leapt and f.schedule == "coalesced", 5)
        assert consumer.wait_for(lambda f: f.at > leapt + 2 and f.schedule == "every", 5)
    finally:
        beat.request_stop()
        runner.join(10)
        consumer.close()
    assert codes == [0]
    fires = consumer.snapshot()
    assert [t for t, n in collections.Counter(f.task_id for f in fires).items() if n > 1] == []
    after = [f for f in fires if f.at > leapt]
    # The first plan after the leap fired the coalesced entry once (its slot S) and, for the
    # other entry (grace 5 s, no coalescing), the slots of the last 5 s up to S; then one a second.
    first_coalesced = min(slot_time(f.slot) for f in after if f.schedule == "coalesced")
    assert len([f for f in after if f.schedule == "coalesced" and slot_time(f.slot) <= first_coalesced]) == 1
    burst = [f for f in after if f.schedule == "every" and slot_time(f.slot) <= first_coalesced]
    assert 4 <= len(burst) <= 6, [f.slot for f in burst]
    assert contiguous_seconds([f.slot for f in after if f.schedule == "every"]) == []
    assert contiguous_seconds([f.slot for f in after if f.schedule == "coalesced"]) == []
    assert "coalesced into one fire" in caplog.text and "later than misfire_grace 5s" in caplog.text
