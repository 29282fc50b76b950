"""Benchmark: poll simulated Modbus meters through one process with a thread pool.

Starts `utilitarian simulate modbus` as a separate process (so the simulator's CPU and memory are
not the poller's), polls every meter `--rounds` times through `run_task_call` with `--threads`
threads, each poll making `--reads` Modbus requests, and prints polls/s against the ideal
(threads / (reads x latency)) and the poller's peak RSS.

    .venv/bin/python bench/modbus_poll.py [--meters 1000] [--threads 50] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Three SDM630 register runs -> three requests per poll: 0x00-0x05, 0x48-0x4B, 0x156-0x157.
SERIES = ["voltage_l1", "voltage_l2", "voltage_l3", "active_energy_import", "active_energy_export",
          "active_energy_total"]


def start_simulator(args, meters_file: str) -> subprocess.Popen:
    gateways = max(args.gateways, -(-args.meters // 247))
    command = [sys.executable, "-m", "utilitarian", "simulate", "modbus", "--meters", str(args.meters),
               "--gateways", str(gateways), "--type", "eastron_sdm630", "--latency", str(args.latency),
               "--meters-out", meters_file, "-l", "warning"]
    env = {**os.environ, "UTILITARIAN_CONFIG": os.devnull}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(meters_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"simulator did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--rounds", type=int, default=3, help="polls per meter")
    parser.add_argument("--gateways", type=int, default=5)
    args = parser.parse_args()

    from utilitarian.amr.environments import run_task_call
    from utilitarian.amr.errors import MeterError
    from utilitarian.amr.target import parse_meter_url

    with tempfile.TemporaryDirectory() as folder:
        meters_file = os.path.join(folder, "meters.toml")
        simulator = start_simulator(args, meters_file)
        try:
            with open(meters_file, "rb") as fh:
                meters = tomllib.load(fh)["meters"]
            targets = [parse_meter_url(m["url"] + "&timeout=2") for m in meters]
            reads = 3
            errors: list[str] = []
            durations: list[float] = []

            def poll(target) -> None:
                started = time.monotonic()
                try:
                    result = run_task_call("generic_modbus", "read_values", target, {"series": SERIES})
                    assert len(result.readings) == len(SERIES)
                except MeterError as exc:
                    errors.append(f"{exc.kind}: {exc}")
                durations.append(time.monotonic() - started)

            work = targets * args.rounds
            started = time.monotonic()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(poll, work))
            elapsed = time.monotonic() - started
            try:
                import psutil
                sim_cpu = sum(psutil.Process(simulator.pid).cpu_times()[:2])
            except Exception:  # psutil missing or the process gone: the figure is optional
                sim_cpu = float("nan")
        finally:
            simulator.terminate()
            simulator.wait(10)

    polls_per_s = len(work) / elapsed
    ideal = args.threads / (reads * args.latency)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    durations.sort()
    print(f"meters={args.meters} gateways={max(args.gateways, -(-args.meters // 247))} "
          f"threads={args.threads} latency={args.latency:g}s reads/poll={reads} rounds={args.rounds}")
    print(f"polls: {len(work)} in {elapsed:.2f}s, errors: {len(errors)}")
    print(f"polls/s: {polls_per_s:.1f}  ideal: {ideal:.1f}  ({100 * polls_per_s / ideal:.1f}% of ideal)")
    print(f"requests/s: {polls_per_s * reads:.1f}  ideal: {ideal * reads:.1f}")
    print(f"poll duration: p50 {statistics.median(durations) * 1000:.0f} ms, "
          f"p95 {durations[int(len(durations) * 0.95)] * 1000:.0f} ms, "
          f"floor {reads * args.latency * 1000:.0f} ms")
    poller_cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    print(f"poller peak RSS: {peak_rss_mib:.1f} MiB; CPU seconds: poller {poller_cpu:.1f}, "
          f"simulator {sim_cpu:.1f} (whole run, {os.cpu_count()} cores)")
    for line in errors[:5]:
        print(f"  error: {line}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
