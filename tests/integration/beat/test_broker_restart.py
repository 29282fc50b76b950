"""Broker restart under two beats, on a private node of our own (the shared broker stays up):
both survive, afterwards exactly one leads, the state survived in its durable queue and no slot
fired twice."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import time

import pytest

from support.beat_harness import BeatProcess, FireConsumer, contiguous_seconds, wait_quiet, wait_until, write_config
from support.rabbit import running_private_node
from utilitarian import queues
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology

ENTRIES = {"every": {"cron": "* * * * * *", "task": "utilitarian.ping", "coalesce": False, "misfire_grace": 120.0}}
BEAT = {"retry_interval": 1.0, "retry_jitter": 0.3, "lock_heartbeat": 5.0}


@pytest.fixture
def node():
    yield from running_private_node()


def _plus(iso: str, seconds: float) -> str:
    return (dt.datetime.fromisoformat(iso) + dt.timedelta(seconds=seconds)).isoformat()


def status_of(beat: BeatProcess) -> str:
    return beat.notify.last_status() or ""


def test_broker_restart_under_two_beats(node, tmp_path):
    url = node.url_for("/")
    declare_topology(settings_from_url(url))
    config = write_config(tmp_path / "beat.toml", url, ENTRIES, beat=BEAT)
    consumers = [FireConsumer(url, [queues.DEFAULT])]
    beats = [BeatProcess(config, tmp_path / f"beat{i}.log") for i in range(2)]
    try:
        for b in beats:
            b.wait_ready()
        first = consumers[0].wait_for(lambda f: True, 15)
        assert first, "no fire before the restart"
        assert consumers[0].wait_for(lambda f: f.slot >= _plus(first.slot, 2), 10)
        assert wait_until(lambda: sum(b.is_leader() for b in beats) == 1, 10)

        # When the broker application stops for a few slots and starts again
        stopped = time.monotonic()
        node.stop_app()
        for b in beats:
            assert b.notify.wait_for(lambda n: n.get("STATUS", "").startswith("reconnecting"), 30, since=stopped)
        time.sleep(2.0)  # the outage itself: slots pass while no beat can reach the broker
        node.start_app()
        consumers.append(FireConsumer(url, [queues.DEFAULT]))
        restarted = time.monotonic()

        # Then exactly one beat leads and fires again, the other stands by
        assert consumers[1].wait_for(lambda f: f.at > restarted, 30), "\n".join(b.log_text() for b in beats)
        assert wait_until(lambda: sorted(status_of(b).split(":")[0].split(" ")[0] for b in beats)
                          == ["leader", "standby"], 15), [status_of(b) for b in beats]
        after = consumers[1].wait_for(lambda f: f.at > restarted + 3, 10)
        assert after, "fires stopped after the restart"
        leaders_after = {f.leader for f in consumers[1].snapshot() if f.at > restarted + 1}
        assert len(leaders_after) == 1, leaders_after

        for b in beats:
            b.signal(signal.SIGTERM)
        assert [b.wait_exit(10) for b in beats] == [0, 0]
        wait_quiet(consumers[1])
    finally:
        for b in beats:
            b.stop()
        for c in consumers:
            c.close()
    fires = [f for c in consumers for f in c.snapshot()]
    assert [t for t, n in collections.Counter(f.task_id for f in fires).items() if n > 1] == []
    # Slots missed while the broker was down were caught up from the state that survived the restart.
    assert contiguous_seconds([f.slot for f in fires]) == []
