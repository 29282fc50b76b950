"""Benchmark: CPU of the commit outbox's store work per poll, without polls, threads or a broker.

Groups of --group jobs, each with the readings, events and outcome a poll hands to the outbox
(2 readings, no events, a "done" run, like bench/amr_poll_cpu.py), are committed the way the
outbox's flusher commits them (`store.commit_results`, one transaction per group, publish outbox
rows with --publish), into a fresh store holding the bench registry (--meters Modbus meters, the
same import as amr_round.py). Printed: this process's CPU (user + system, every thread: the store's
writer thread included) per job, for the group size asked, so the flusher's share of a poll can be
cut without the noise of polling.

    .venv/bin/python bench/amr_commit_cpu.py [--group 150] [--jobs 6000] [--publish] [--database URL]

--database postgresql://... commits into that (empty, migrated here) database instead of SQLite;
its tables are truncated first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import sys
import time
import uuid

BENCH = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
UTC = dt.timezone.utc


def meters_file(work: pathlib.Path, n: int) -> pathlib.Path:
    """A meter list like the simulator's (20 gateways), without starting the simulator."""
    path = work / "meters.toml"
    rows = []
    for i in range(n):
        port = 40000 + i % 20
        rows.append(f'[[meters]]\nname = "sim-modbus-{i + 1:05d}"\nexecution_type = "generic_modbus"\n'
                    f'meter_type = "eastron_sdm120"\nurl = "modbus+tcp://127.0.0.1:{port}?device_id={i // 20 % 247 + 1}'
                    f'&type=eastron_sdm120"\ninterface = "127.0.0.1:{port}"\ncan_block = false\n')
    path.write_text("\n".join(rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", type=int, default=150)
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--meters", type=int, default=6000)
    parser.add_argument("--publish", action="store_true", help="write publish outbox rows as well")
    parser.add_argument("--database", help="a PostgreSQL URL (default: a SQLite file in a temporary directory)")
    args = parser.parse_args()

    from amr_round import SERIES, install
    from common import tmpdir

    from utilitarian.amr.model import AmrTaskRun, MeterReading
    from utilitarian.amr.store import open_store

    work = tmpdir()
    db_url = args.database or f"sqlite:///{work / 'amr.sqlite3'}"
    if args.database:
        with open_store(db_url) as store:
            store.migrate()
            with store.backend.transaction(write=True) as tx:
                for table in ("meter_reading", "amr_task_run", "publish_outbox", "meter_system_event"):
                    tx.execute(f"DELETE FROM {table}")
    install(db_url, meters_file(work, args.meters))
    slot = dt.datetime.now(UTC).replace(microsecond=0)
    finished = dt.datetime.now(UTC)

    def job(i: int):
        meter = f"sim-modbus-{i % args.meters + 1:05d}"
        job_id = str(uuid.uuid4())
        readings = [MeterReading(meter, s, slot, f"{1000 + i}.{k}", "kWh") for k, s in enumerate(SERIES)]
        return (job_id, readings), AmrTaskRun(job_id, meter, "read-daily", "done", "bench", None, 0.01, 1, finished)

    with open_store(db_url, pool_size=4) as store:
        groups = []
        for start in range(0, args.jobs, args.group):
            jobs = [job(i) for i in range(start, min(args.jobs, start + args.group))]
            groups.append(([j[0] for j in jobs], [j[1] for j in jobs]))
        first_readings, first_runs = groups.pop(0)  # warms connections and caches
        store.commit_results(first_readings, [], first_runs, now=dt.datetime.now(UTC), publish=args.publish)
        n = sum(len(g[1]) for g in groups)
        p0, w0 = time.process_time(), time.monotonic()
        for readings, runs in groups:
            store.commit_results(readings, [], runs, now=dt.datetime.now(UTC), publish=args.publish)
        cpu, wall = time.process_time() - p0, time.monotonic() - w0
    print(f"# {n} jobs in groups of {args.group}, {'with' if args.publish else 'without'} publish outbox, "
          f"{db_url.split(':', 1)[0]}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"commit CPU/job {cpu / n * 1e3:.3f} ms; wall/job {wall / n * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
