"""Two (then three) real beat processes on a real broker with every-second entries for about 30 s:
every slot fired exactly once, counted by task id at a real consumer, across a SIGKILL of the
leader (standby leads within 5 s, missed slots caught up as configured) and a SIGTERM of the
next leader (hand-over within 1 s, exit 0). sd_notify READY/STATUS/WATCHDOG/STOPPING are read
from each process's own NOTIFY_SOCKET."""

from __future__ import annotations

import collections
import signal
import time

from support.beat_harness import (BeatProcess, FireConsumer, contiguous_seconds, slot_time, wait_quiet,
                                  write_config)
from utilitarian import queues
from utilitarian.beat.fires import task_id_for
from utilitarian.broker.topology import declare_topology

ENTRIES = {
    # Every missed slot within a minute is caught up: the run must show no gap at all.
    "every": {"cron": "* * * * * *", "task": "utilitarian.ping", "coalesce": False, "misfire_grace": 60.0},
    # Missed slots fire once (the latest): the SIGKILL gap shows as missing seconds.
    "coalesced": {"cron": "* * * * * *", "task": "beat_test.tick", "coalesce": True, "misfire_grace": 60.0,
                  "slot_kwarg": "slot"},
}
BEAT = {"retry_interval": 2.0, "retry_jitter": 0.5, "lock_heartbeat": 5.0}
RUN = 30.0


def leader_note(note: dict) -> bool:
    return note.get("STATUS", "").startswith("leader since")


def test_two_beats_fire_every_slot_once_across_sigkill_and_sigterm(tmp_path, broker_url, broker_settings):
    # Given the topology, a consumer on both target queues and two beats with the same config
    declare_topology(broker_settings)
    consumer = FireConsumer(broker_url, [queues.DEFAULT, queues.AMR])
    config = write_config(tmp_path / "beat.toml", broker_url, ENTRIES, beat=BEAT)
    beats = [BeatProcess(config, tmp_path / f"beat{i}.log", watchdog_usec=1_000_000) for i in range(2)]
    started = time.monotonic()
    try:
        for b in beats:
            ready = b.wait_ready()
            assert ready["MAINPID"] == str(b.pid)
        first = _wait_leader(beats, 15)
        standby = next(b for b in beats if b is not first)
        assert consumer.wait_for(lambda f: f.schedule == "every", 10), "no fire from the first leader"
        # The timeline counts from the first fire: a slow start on a loaded machine must not
        # shorten the 30 s the assertions below expect to cover.
        started = time.monotonic()
        assert standby.notify.wait_for(lambda n: n.get("STATUS", "").startswith("standby: lock held by"), 10)

        # When the leader is SIGKILLed mid-run
        _run_until(started + 8)
        killed_at = first.signal(signal.SIGKILL)
        assert first.wait_exit(5) == -signal.SIGKILL
        # Then the standby leads within 5 s
        took = standby.notify.wait_for(leader_note, 10, since=killed_at)
        assert took, f"standby did not take over; log:\n{standby.log_text()}"
        assert took[0] - killed_at < 5.0, f"SIGKILL fail-over took {took[0] - killed_at:.2f}s"

        # Given a fresh standby for the second leader
        third = BeatProcess(config, tmp_path / "beat2.log", watchdog_usec=1_000_000)
        beats.append(third)
        third.wait_ready()
        # the leader's announcement names it in the standby's STATUS
        assert third.notify.wait_for(lambda n: f":{standby.pid} since" in n.get("STATUS", ""), 10)

        # When the second leader gets SIGTERM
        _run_until(started + 20)
        termed_at = standby.signal(signal.SIGTERM)
        took = third.notify.wait_for(leader_note, 5, since=termed_at)
        assert took, f"no hand-over after TERM; log:\n{third.log_text()}"
        assert took[0] - termed_at < 1.0, f"TERM hand-over took {took[0] - termed_at:.2f}s"
        assert standby.wait_exit(5) == 0
        assert standby.notify.wait_for(lambda n: n.get("STOPPING") == "1", 1)

        _run_until(started + RUN + 2)
        third.signal(signal.SIGTERM)
        assert third.wait_exit(5) == 0
        wait_quiet(consumer)
    finally:
        for b in beats:
            b.stop()
        consumer.close()

    fires = consumer.snapshot()
    by_id = collections.Counter(f.task_id for f in fires)
    assert [tid for tid, n in by_id.items() if n > 1] == [], "a slot was fired twice"
    every = [f for f in fires if f.schedule == "every"]
    coalesced = [f for f in fires if f.schedule == "coalesced"]
    # Then every slot of the 30 s run fired exactly once, with its deterministic id
    assert all(f.task_id == task_id_for("every", slot_time(f.slot)) for f in every)
    span = (slot_time(max(f.slot for f in every)) - slot_time(min(f.slot for f in every))).total_seconds()
    assert span >= RUN
    assert contiguous_seconds([f.slot for f in every]) == []
    assert len(every) == span + 1
    # three leaders fired, in turn
    leaders = list(dict.fromkeys(f.leader for f in sorted(every, key=lambda f: f.slot)))
    assert [tag.split(":")[1].split("/")[0] for tag in leaders] == [str(first.pid), str(standby.pid), str(third.pid)]
    # the coalescing entry fired each take-over's missed slots as one fire (the latest): where
    # `every` caught up k slots in a new leader's first commit, `coalesced` misses k - 1 seconds
    expected_missing = 0
    for tag in leaders[1:]:
        first_coalesced = min(slot_time(f.slot) for f in coalesced if f.leader == tag)
        burst = [f for f in every if f.leader == tag and slot_time(f.slot) <= first_coalesced]
        expected_missing += len(burst) - 1
    assert len(contiguous_seconds([f.slot for f in coalesced])) == expected_missing
    assert all(f.kwargs.get("slot") == f.slot for f in coalesced)
    # and every process pinged the watchdog while it ran
    for b in beats:
        assert b.notify.wait_for(lambda n: n.get("WATCHDOG") == "1", 0.1), f"beat {b.pid} never pinged"


def _wait_leader(beats, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b in beats:
            if b.is_leader():
                return b
        beats[0].notify.wait_for(leader_note, 0.2)
    raise AssertionError("no beat became leader:\n" + "\n".join(b.log_text() for b in beats))


def _run_until(deadline: float) -> None:
    """The test's own timeline: the beats run on their own meanwhile."""
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)
