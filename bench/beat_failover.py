"""Fail-over time of `utilitarian beat`, over N trials each after SIGKILL and after SIGTERM of the
leader: signal -> the standby's STATUS says "leader since" (its NOTIFY_SOCKET), and signal -> the
first fire of the new leader at a consumer. Default [beat] settings (retry 3 s +- 1 s) unless told.

    .venv/bin/python bench/beat_failover.py [--trials 10] [--retry-interval 3.0] [--retry-jitter 1.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.beat_harness import (BeatProcess, FireConsumer, contiguous_seconds, wait_quiet, wait_until,  # noqa: E402
                                  write_config)


def leader_note(note: dict) -> bool:
    return note.get("STATUS", "").startswith("leader since")


def stats(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    return (f"{name:<34} n={len(values):2d}  min={ordered[0]:6.3f}s  median={statistics.median(ordered):6.3f}s  "
            f"max={ordered[-1]:6.3f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--retry-interval", type=float, default=3.0)
    parser.add_argument("--retry-jitter", type=float, default=1.0)
    args = parser.parse_args()

    vhost = f"bench-beat-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix="beat-failover-"))
    config = write_config(workdir / "beat.toml", url,
                          {"every": {"cron": "* * * * * *", "task": "utilitarian.ping", "coalesce": False}},
                          beat={"retry_interval": args.retry_interval, "retry_jitter": args.retry_jitter})
    from utilitarian import queues
    from utilitarian.broker.connection import settings_from_url
    from utilitarian.broker.topology import declare_topology

    declare_topology(settings_from_url(url))
    consumer = FireConsumer(url, [queues.DEFAULT])
    results: dict[str, tuple[list[float], list[float]]] = {"SIGKILL": ([], []), "SIGTERM": ([], [])}
    beats: list[BeatProcess] = []
    counter = 0

    def spawn() -> BeatProcess:
        nonlocal counter
        counter += 1
        b = BeatProcess(config, workdir / f"beat{counter}.log")
        beats.append(b)
        b.wait_ready()
        return b

    try:
        live = [spawn(), spawn()]
        for sig in (signal.SIGKILL, signal.SIGTERM):
            for _ in range(args.trials):
                leader = wait_until(lambda: next((b for b in live if b.is_leader()), None), 30)
                standby = next(b for b in live if b is not leader)
                # the standby is settled (it has tried the lock at least once) before the signal
                assert wait_until(lambda: (standby.notify.last_status() or "").startswith("standby"), 30)
                assert consumer.wait_for(lambda f: f.leader and f.leader.split(":")[1].startswith(f"{leader.pid}/"),
                                         5)
                sent = leader.signal(sig)
                took = standby.notify.wait_for(leader_note, 30, since=sent)
                fired = consumer.wait_for(lambda f: f.at > sent and f.leader
                                          and f.leader.split(":")[1].startswith(f"{standby.pid}/"), 30)
                assert took and fired, "no fail-over"
                results[sig.name][0].append(took[0] - sent)
                results[sig.name][1].append(fired.at - sent)
                leader.wait_exit(10)
                live = [standby, spawn()]
        for b in live:
            b.signal(signal.SIGTERM)
            b.wait_exit(10)
        wait_quiet(consumer)
    finally:
        for b in beats:
            b.stop()
        consumer.close()
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)
    seen = consumer.snapshot()
    ids = [f.task_id for f in seen]
    gaps = contiguous_seconds([f.slot for f in seen])
    print(f"beat fail-over: {args.trials} trials per signal; retry_interval={args.retry_interval}s "
          f"+- {args.retry_jitter}s; every-second entry")
    for name, (lead, fire) in results.items():
        print(stats(f"{name}: signal -> standby leads", lead))
        print(stats(f"{name}: signal -> first fire of new", fire))
    print(f"fires: {len(ids)} over {len(set(f.leader for f in seen))} leaderships, duplicates by task id: "
          f"{len(ids) - len(set(ids))}, slots missing between first and last: {len(gaps)}")
    print("load average at the end (1/5/15 min): %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
