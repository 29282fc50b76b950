"""Worker benchmarks, side by side with Celery 5 in the same run (medians of --runs):

  noop    20,000 tasks appending one byte each, filled by Celery's producer; utilitarian at its
          defaults with -c 2 (Celery -P prefork -c 2; a raw pika consumer, prefetch 100 and
          `multiple` acks, as the floor of what Python + pika can do); CPU per task of each
          process tree, from its first task to its last
  io      2,000 tasks sleeping 0.1 s: 100 slots (Celery -P threads -c 100) and 8 slots
          (Celery -P prefork -c 8), against the ideal N x 0.1 / slots
  memory  idle PSS/RSS of the whole process tree, and start-up to ready

Every figure is printed with the command that produced it (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

from common import (BENCH, REPO, env_for, fill, fill_with_celery, median, stop, tmpdir, tree_memory, url_for,
                    vhost, wait_counter, write_config)

PY = sys.executable
CELERY = [PY, "-m", "celery", "-A", "celery_bench_app", "worker", "-Q", "utilitarian.tasks.default",
          "--without-gossip", "--without-mingle", "--without-heartbeat"]


def run_celery(url: str, counter: pathlib.Path, n: int, pool_args: list[str], log: pathlib.Path):
    proc = subprocess.Popen(CELERY + pool_args + ["-l", "info"], env=env_for(counter, url), cwd=BENCH,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc


def run_ours(config: pathlib.Path, counter: pathlib.Path, args: list[str], log: pathlib.Path, env_extra=None):
    env = {**env_for(counter, ""), **(env_extra or {})}
    return subprocess.Popen([PY, "-m", "utilitarian", "worker", "--config", str(config), "-I", "bench_tasks",
                             "-Q", "default", *args], env=env, cwd=REPO, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def timed(system: str, n: int, task: str, task_args: list, start, producer: str = "ours") -> tuple:
    """Queue filled first, then the worker starts: (seconds from process start to the last task,
    steady seconds from the first to the last task, CPU seconds per task of the worker's process
    tree from its first task to its last)."""
    with vhost("bench-w") as v:
        url = url_for(v)
        work = tmpdir()
        config = write_config(work, url)
        if producer == "celery":
            fill(config, task, 0)  # the topology only
            fill_with_celery(url, task, n, task_args)
        else:
            fill(config, task, n, task_args)
        counter = work / "counter"
        began = time.monotonic()
        first, done, cpu = drained(start(url, config, counter, work), counter, n)
        return done - began, done - first, cpu


def drained(proc: subprocess.Popen, counter: pathlib.Path, n: int) -> tuple[float, float, float]:
    """Wait for `n` tasks, then stop `proc`: (monotonic time of the first task, of the n-th, CPU
    seconds per task of proc's process tree between them)."""
    try:
        first: list = []
        cpu: list = []
        done = wait_counter(counter, n, first=first, cpu_of=proc.pid, cpu=cpu)
    finally:
        stop(proc)
    tasks, seconds = cpu[0] if cpu else (n, float("nan"))
    return first[0], done, seconds / max(1, tasks)


def live(system: str, n: int, task: str, task_args: list, worker_args: list[str]) -> float:
    """Producer to last task: the worker is already up; the clock starts when the producer
    starts publishing (each system with its own producer: Celery's send_task as it is by
    default, ours with pipelined confirms) and stops when the n-th task has run."""
    from support_notify import NotifyListener

    with vhost("bench-live") as v:
        url = url_for(v)
        work = tmpdir()
        config = write_config(work, url)
        fill(config, task, 0)
        counter = work / "counter"
        if system == "celery":
            log = work / "celery.log"
            proc = run_celery(url, counter, n, worker_args, log)
            deadline = time.monotonic() + 60
            while b" ready." not in log.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            listener = NotifyListener(work / "notify.sock")
            proc = run_ours(config, counter, worker_args, work / "worker.log", {"NOTIFY_SOCKET": str(listener.path)})
            listener.wait_for("READY=1", 30)
            listener.close()
        try:
            began = time.monotonic()
            if system == "celery":
                from celery import Celery

                app = Celery("bench-producer", broker=url)
                app.conf.task_serializer = "json"
                with app.producer_or_acquire() as producer:
                    for _ in range(n):
                        app.send_task(task, task_args, queue="utilitarian.tasks.default", producer=producer)
            else:
                from utilitarian.app import App, TaskCall
                from utilitarian.config import load_config

                app = App(load_config(str(config)))
                app.send_tasks([TaskCall(task, task_args, queue="default") for _ in range(n)])
                app.close()
            done = wait_counter(counter, n)
        finally:
            stop(proc)
        return done - began


def live_rows(runs: int, n: int, task: str, task_args: list, celery_pool: list[str], ours_args: list[str],
              title: str) -> tuple[float, float]:
    c = median([live("celery", n, task, task_args, celery_pool) for _ in range(runs)])
    o = median([live("ours", n, task, task_args, ours_args) for _ in range(runs)])
    print(f"{title}, producer to last task, worker already running, median of {runs} runs:")
    print(f"  celery {' '.join(celery_pool):<29} {c:6.2f}s = {n / c:8,.0f}/s")
    print(f"  utilitarian {' '.join(ours_args):<24} {o:6.2f}s = {n / o:8,.0f}/s   ({c / o:.2f}x celery)")
    return c, o


def noop(runs: int, n: int, threads: int | None, producer: str, live: bool) -> None:
    flags = ["-c", "2"] + (["--threads", str(threads)] if threads else [])
    ours = "utilitarian " + " ".join(flags) + ("" if threads else " (defaults)")
    rows = {"celery prefork -c 2": [], ours: [], "raw pika consumer": []}
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for _ in range(runs):  # the three side by side in each run, so load changes hit them alike
        rows["celery prefork -c 2"].append(timed("celery", n, "bench.noop", [], lambda url, cfg, ctr, w: run_celery(
            url, ctr, n, ["-P", "prefork", "-c", "2"], w / "celery.log"), producer))
        rows[ours].append(timed("ours", n, "bench.noop", [], lambda url, cfg, ctr, w: run_ours(
            cfg, ctr, flags, w / "worker.log"), producer))
        rows["raw pika consumer"].append(timed("raw", n, "bench.noop", [], lambda url, cfg, ctr, w: subprocess.Popen(
            [PY, str(BENCH / "raw_pika_consumer.py"), url, "utilitarian.tasks.default", str(ctr), str(n)]), producer))
    report(f"no-op: {n:,} tasks (filled by {producer}'s producer)", n, rows)
    c = median([n / r[0] for r in rows["celery prefork -c 2"]])
    o = median([n / r[0] for r in rows[ours]])
    r = median([n / r[0] for r in rows["raw pika consumer"]])
    cpu = median([r[2] for r in rows[ours]])
    print(f"  utilitarian / celery = {o / c:.1f}x (goal >= 4x); utilitarian / raw pika = {o / r:.0%} (goal >= 75%); "
          f"utilitarian CPU per task {cpu * 1e6:.0f} us (goal <= 60 us)")
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if live:
        live_rows(runs, n, "bench.noop", [], ["-P", "prefork", "-c", "2"], flags, f"no-op: {n:,} tasks")


def io_bound(runs: int, n: int, sleep: float) -> None:
    for slots, celery_pool, ours_args in ((100, ["-P", "threads", "-c", "100"], ["-c", "2", "--threads", "50"]),
                                          (8, ["-P", "prefork", "-c", "8"], ["-c", "2", "--threads", "4"])):
        name_c = f"celery {' '.join(celery_pool)}"
        name_o = f"utilitarian {' '.join(ours_args)}"
        rows = {name_c: [], name_o: []}
        for _ in range(runs):
            rows[name_c].append(timed("celery", n, "bench.sleep", [sleep], lambda url, cfg, ctr, w: run_celery(
                url, ctr, n, celery_pool, w / "celery.log")))
            rows[name_o].append(timed("ours", n, "bench.sleep", [sleep], lambda url, cfg, ctr, w: run_ours(
                cfg, ctr, ours_args, w / "worker.log")))
        ideal = n * sleep / slots
        report(f"I/O-bound: {n:,} tasks x {sleep}s on {slots} slots (ideal {ideal:.2f}s)", n, rows)
        steady = median([r[1] for r in rows[name_o]])
        e2e_c = median([r[0] for r in rows[name_c]])
        e2e_o = median([r[0] for r in rows[name_o]])
        print(f"  utilitarian steady {steady:.2f}s = {steady / ideal:.2f}x ideal (target <= 1.2x); "
              f"end to end {e2e_c / e2e_o:.2f}x faster than celery")
        live_rows(runs, n, "bench.sleep", [sleep], celery_pool, ours_args, f"I/O-bound on {slots} slots")


def memory(runs: int) -> None:
    from support_notify import NotifyListener

    startup_o, startup_c, mem = [], [], {}
    for _ in range(runs):
        with vhost("bench-m") as v:
            url = url_for(v)
            work = tmpdir()
            config = write_config(work, url)
            fill(config, "bench.noop", 0)
            counter = work / "counter"
            listener = NotifyListener(work / "notify.sock")
            began = time.monotonic()
            proc = run_ours(config, counter, ["-c", "2", "--threads", "100"], work / "worker.log",
                            {"NOTIFY_SOCKET": str(listener.path)})
            listener.wait_for("READY=1", 30)
            startup_o.append(time.monotonic() - began)
            time.sleep(2)
            mem.setdefault("utilitarian idle at start, -c 2 --threads 100", []).append(tree_memory(proc.pid))
            fill(config, "bench.sleep", 400, [0.2])  # every thread of both children exists now
            wait_counter(counter, 400)
            time.sleep(2)
            mem.setdefault("utilitarian idle after using all 200 threads", []).append(tree_memory(proc.pid))
            stop(proc)
            listener.close()
        with vhost("bench-m") as v:
            url = url_for(v)
            work = tmpdir()
            log = work / "celery.log"
            began = time.monotonic()
            proc = run_celery(url, work / "counter", 0, ["-P", "prefork", "-c", "8"], log)
            deadline = time.monotonic() + 60
            while b" ready." not in log.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.005)
            startup_c.append(time.monotonic() - began)
            time.sleep(2)
            mem.setdefault("celery prefork -c 8 idle", []).append(tree_memory(proc.pid))
            stop(proc)
    print("memory (whole process tree), median:")
    for name, values in mem.items():
        print(f"  {name:<48} PSS {median([p for p, _ in values]):6.1f} MiB   RSS {median([r for _, r in values]):6.1f} MiB")
    print(f"start to ready, median: utilitarian {median(startup_o):.3f}s (target <= 0.5s)   "
          f"celery prefork -c 8 {median(startup_c):.3f}s")


def report(title: str, n: int, rows: dict) -> None:
    print(f"{title}, median of {len(next(iter(rows.values())))} runs:")
    for name, values in rows.items():
        e2e = median([r[0] for r in values])
        steady = median([r[1] for r in values])
        cpu = median([r[2] for r in values])
        print(f"  {name:<36} end to end {e2e:6.2f}s = {n / e2e:8,.0f}/s   steady {steady:6.2f}s = {n / steady:8,.0f}/s"
              f"   CPU/task {cpu * 1e6:5.0f} us")


def compile_bytecode() -> None:
    """Our modules' bytecode, as an installed package has it (pip compiles at install; Celery's and
    pika's in .venv have theirs). Where PYTHONDONTWRITEBYTECODE is set, as in this session's
    environment, a worker started from the checkout otherwise compiles ~100 modules from source
    at every start, ~0.3-0.8 s of the "end to end" figure."""
    import compileall

    for directory in (REPO / "utilitarian", BENCH):
        compileall.compile_dir(str(directory), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", default=["noop", "io", "memory"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per child for the no-op run (default: the worker's defaults)")
    parser.add_argument("--producer", choices=("celery", "ours"), default="celery",
                        help="who fills the queue for the no-op run")
    parser.add_argument("--no-live", action="store_true", help="skip the producer-to-last-task no-op rows")
    args = parser.parse_args()
    os.chdir(BENCH)
    compile_bytecode()
    if "noop" in args.which:
        noop(args.runs, 20_000, args.threads, args.producer, not args.no_live)
    if "io" in args.which:
        io_bound(args.runs, 2_000, 0.1)
    if "memory" in args.which:
        memory(args.runs)


if __name__ == "__main__":
    main()
