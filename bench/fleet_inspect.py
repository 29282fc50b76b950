"""Benchmark: how long `status --all` (utilitarian.fleet.inspect_fleet) takes over the broker, with
N worker masters (one pool of one child each, each its own "host") and a beat, all answering; and
with one of them stopped (SIGSTOP), when the round waits for its deadline. Figures only.

    .venv/bin/python bench/fleet_inspect.py [--workers 5] [--rounds 20] [--timeout 2.0]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time

BENCH = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from common import median, stop, tmpdir, url_for, vhost, write_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    from utilitarian.broker.topology import declare_topology
    from utilitarian.config import load_config
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.fleet.inspect import inspect_fleet

    with vhost("fleet") as name:
        directory = tmpdir()
        config_path = write_config(directory, url_for(name))
        config = load_config(str(config_path))
        declare_topology(settings_from_config(config))
        procs = []
        for i in range(args.workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "utilitarian", "worker", "--config", str(config_path), "-Q", "default",
                 "-c", "1", "-n", f"w{i}@bench{i}"], env={**os.environ, "UTILITARIAN_HOSTNAME": f"bench{i}"},
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, "-m", "utilitarian", "beat", "--config", str(config_path)],
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            want = args.workers + 1
            deadline = time.monotonic() + 120
            while sum(r["state"] == "answering" for r in inspect_fleet(config, args.timeout)) < want:
                if time.monotonic() > deadline:
                    raise SystemExit("not every member answered within 120 s")
                time.sleep(0.5)
            for label in ("all answering", "one stopped (SIGSTOP)"):
                if label.startswith("one"):
                    os.killpg(procs[0].pid, signal.SIGSTOP)
                times, states = [], None
                for _ in range(args.rounds if label.startswith("all") else 3):
                    started = time.monotonic()
                    reports = inspect_fleet(config, args.timeout)
                    times.append(time.monotonic() - started)
                    states = sorted(r["state"] for r in reports)
                print(f"{label}: {len(states)} members ({states.count('silent')} silent), round median "
                      f"{median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms (timeout {args.timeout:.1f} s)")
            os.killpg(procs[0].pid, signal.SIGCONT)
        finally:
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                stop(proc)


if __name__ == "__main__":
    main()
