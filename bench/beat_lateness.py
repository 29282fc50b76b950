"""Fire lateness of `utilitarian beat`: slot -> transaction committed (from the beat's own log
line) and slot -> received by a consumer, p50/p99/max over N fires of several every-second
entries running in parallel on a real broker (a private vhost, deleted afterwards).

    .venv/bin/python bench/beat_lateness.py [--fires 1000] [--entries 8] [--url amqp://...]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.beat_harness import BeatProcess, FireConsumer, slot_time, wait_quiet, write_config  # noqa: E402

LATE = re.compile(r"fired (\S+) slot (\S+) \(\+([0-9.]+) ms\)")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<28} n={len(values):5d}  p50={percentile(values, 50):7.2f} ms  "
            f"p99={percentile(values, 99):7.2f} ms  max={max(values):7.2f} ms  mean={statistics.mean(values):7.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fires", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--url", help="broker URL (default: a fresh vhost on the local broker via rabbitmqctl)")
    args = parser.parse_args()

    vhost = None
    url = args.url
    if url is None:
        vhost = f"bench-beat-{uuid.uuid4().hex[:8]}"
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True)
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix="beat-bench-"))
    entries = {f"e{i}": {"cron": "* * * * * *", "task": "utilitarian.ping", "coalesce": False}
               for i in range(args.entries)}
    config = write_config(workdir / "beat.toml", url, entries)
    from utilitarian.broker.connection import settings_from_url
    from utilitarian.broker.topology import declare_topology
    from utilitarian import queues

    declare_topology(settings_from_url(url))
    consumer = FireConsumer(url, [queues.DEFAULT])
    beat = BeatProcess(config, workdir / "beat.log")
    started = time.monotonic()
    try:
        beat.wait_ready()
        while len(consumer.snapshot()) < args.fires:
            if beat.proc.poll() is not None:
                raise SystemExit(f"beat exited with {beat.proc.returncode}:\n{beat.log_text()}")
            consumer.wait_for(lambda f: False, 1.0)
        beat.signal(signal.SIGTERM)
        code = beat.wait_exit(10)
        wait_quiet(consumer, quiet=0.5)
    finally:
        beat.stop()
        consumer.close()
        if vhost:
            subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)
    fires = consumer.snapshot()[: args.fires]
    received = [(f.wall - slot_time(f.slot).timestamp()) * 1000.0 for f in fires]
    committed = [float(m.group(3)) for m in LATE.finditer(beat.log_text())][: args.fires]
    ids = [f.task_id for f in consumer.snapshot()]
    print(f"beat lateness: {len(fires)} fires of {args.entries} every-second entries in "
          f"{time.monotonic() - started:.0f}s (one transaction per second: {args.entries} fires + state)")
    print(summary("slot -> tx committed (log)", committed))
    print(summary("slot -> consumer received", received))
    print(f"duplicates by task id: {len(ids) - len(set(ids))}; beat exit code after TERM: {code}")
    print("load average at the end (1/5/15 min): %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
