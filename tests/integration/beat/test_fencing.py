"""Fencing: a leader whose connection is cut by the broker (`rabbitmqctl close_connection`) sends
no further fire from that leadership, on any connection, and re-contends; an operator deleting
the lock queue makes the leader stop and take the lock anew. No slot fires twice throughout."""

from __future__ import annotations

import collections
import signal
import time

from support.beat_harness import (BeatProcess, FireConsumer, beat_connection, contiguous_seconds, wait_quiet,
                                  wait_until, write_config)
from utilitarian import queues
from utilitarian.broker.topology import declare_topology

ENTRIES = {"every": {"cron": "* * * * * *", "task": "utilitarian.ping", "coalesce": False, "misfire_grace": 60.0}}


def test_cut_leader_fires_nothing_more_and_recontends(rabbit, vhost, tmp_path, broker_url, broker_settings):
    declare_topology(broker_settings)
    consumer = FireConsumer(broker_url, [queues.DEFAULT])
    config = write_config(tmp_path / "beat.toml", broker_url, ENTRIES, beat={"lock_heartbeat": 5.0})
    beat = BeatProcess(config, tmp_path / "beat.log")
    try:
        beat.wait_ready()
        first = consumer.wait_for(lambda f: True, 15)
        assert first, f"no fire; log:\n{beat.log_text()}"
        term1 = first.leader
        assert term1.endswith(f":{beat.pid}/1")
        assert consumer.wait_for(lambda f: f.slot > first.slot, 5)

        # When the broker cuts the leader's connection
        conn = beat_connection(rabbit, vhost, beat.pid)
        assert conn, "the beat's connection is not listed"
        rabbit.ctl("close_connection", conn, "test cuts the beat leader")
        assert wait_until(lambda: beat_connection(rabbit, vhost, beat.pid) != conn, 10)
        cut_at = time.monotonic()
        # Then it leads again under a new term (a new connection, a new lock) ...
        term2 = consumer.wait_for(lambda f: f.leader != term1, 15)
        assert term2 and term2.leader.endswith(f":{beat.pid}/2"), f"no re-contention; log:\n{beat.log_text()}"
        # ... and nothing of the old term was received once its connection was gone
        late = [f for f in consumer.snapshot() if f.leader == term1 and f.at > cut_at]
        assert late == []
        assert "lost the beat lock" in beat.log_text()

        # When an operator deletes the lock queue under the leader
        rabbit.ctl("delete_queue", "-p", vhost, "utilitarian.beat.lock")
        term3 = consumer.wait_for(lambda f: f.leader.endswith("/3"), 15)
        assert term3, f"leader did not notice its lock was gone; log:\n{beat.log_text()}"
        assert consumer.wait_for(lambda f: f.leader.endswith("/3") and f.slot > term3.slot, 5)

        beat.signal(signal.SIGTERM)
        assert beat.wait_exit(5) == 0
        wait_quiet(consumer)
    finally:
        beat.stop()
        consumer.close()
    fires = consumer.snapshot()
    assert [t for t, n in collections.Counter(f.task_id for f in fires).items() if n > 1] == []
    # the gaps while it reconnected were caught up (coalesce off, grace 60 s)
    assert contiguous_seconds([f.slot for f in fires]) == []
