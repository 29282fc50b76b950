"""Publish 20,000 task messages with publisher confirms: our pipelined publisher against Celery's
`send_task` with `confirm_publish`, in the same run on the same broker. Prints both rates, and the
publishing process's CPU per message (all its threads: user + system), the figure that matters
on a shared machine where the broker's speed sets the rate."""

from __future__ import annotations

import argparse
import resource
import time

from common import median, tmpdir, url_for, vhost, write_config


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ours(url: str, n: int) -> tuple[float, float]:
    from utilitarian.app import App, TaskCall
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.config import load_config

    config = load_config(str(write_config(tmpdir(), url)))
    declare_topology(settings_from_config(config))
    app = App(config)
    app.send_task("bench.noop", queue="default")  # connect outside the timing
    started, cpu = time.monotonic(), cpu_seconds()
    app.send_tasks([TaskCall("bench.noop", queue="default") for _ in range(n)])
    elapsed, cpu = time.monotonic() - started, cpu_seconds() - cpu
    app.close()
    return n / elapsed, cpu / n


def celery(url: str, n: int) -> tuple[float, float]:
    from celery import Celery

    app = Celery("bench", broker=url.replace("amqp://", "pyamqp://", 1))
    app.conf.update(broker_transport_options={"confirm_publish": True}, task_serializer="json")
    app.send_task("bench.noop", queue="utilitarian.tasks.default")
    started, cpu = time.monotonic(), cpu_seconds()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("bench.noop", queue="utilitarian.tasks.default", producer=producer)
    elapsed, cpu = time.monotonic() - started, cpu_seconds() - cpu
    return n / elapsed, cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-celery", action="store_true")
    args = parser.parse_args()
    ours_runs, celery_runs = [], []
    for run in range(args.runs):
        with vhost("bench-pub") as v:
            ours_runs.append(ours(url_for(v), args.n))
        line = f"run {run + 1}: utilitarian {ours_runs[-1][0]:,.0f}/s {ours_runs[-1][1] * 1e6:.1f} µs CPU/msg"
        if not args.skip_celery:
            with vhost("bench-pub") as v:
                celery_runs.append(celery(url_for(v), args.n))
            line += f"   celery {celery_runs[-1][0]:,.0f}/s {celery_runs[-1][1] * 1e6:.1f} µs CPU/msg"
        print(line)
    o, o_cpu = median([r for r, _ in ours_runs]), median([c for _, c in ours_runs])
    print(f"confirmed publish of {args.n:,} task messages, median of {args.runs} runs:")
    print(f"  utilitarian (pipelined confirms) {o:10,.0f} msg/s {o_cpu * 1e6:7.1f} µs CPU/msg")
    if celery_runs:
        c, c_cpu = median([r for r, _ in celery_runs]), median([c for _, c in celery_runs])
        print(f"  celery send_task confirm_publish {c:10,.0f} msg/s {c_cpu * 1e6:7.1f} µs CPU/msg")
        print(f"  ratio {o / c:.1f}x (target >= 10x), CPU per message {c_cpu / o_cpu:.1f}x less")


if __name__ == "__main__":
    main()
