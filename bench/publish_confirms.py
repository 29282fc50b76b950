"""Publish 20,000 task messages with publisher confirms: our pipelined publisher against Celery's
`send_task` with `confirm_publish`, in the same run on the same broker. Prints both rates."""

from __future__ import annotations

import argparse
import time

from common import median, tmpdir, url_for, vhost, write_config


def ours(url: str, n: int) -> float:
    from utilitarian.app import App, TaskCall
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.config import load_config

    config = load_config(str(write_config(tmpdir(), url)))
    declare_topology(settings_from_config(config))
    app = App(config)
    app.send_task("bench.noop", queue="default")  # connect outside the timing
    started = time.monotonic()
    app.send_tasks([TaskCall("bench.noop", queue="default") for _ in range(n)])
    elapsed = time.monotonic() - started
    app.close()
    return n / elapsed


def celery(url: str, n: int) -> float:
    from celery import Celery

    app = Celery("bench", broker=url.replace("amqp://", "pyamqp://", 1))
    app.conf.update(broker_transport_options={"confirm_publish": True}, task_serializer="json")
    app.send_task("bench.noop", queue="utilitarian.tasks.default")
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("bench.noop", queue="utilitarian.tasks.default", producer=producer)
    elapsed = time.monotonic() - started
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ours_rates, celery_rates = [], []
    for run in range(args.runs):
        with vhost("bench-pub") as v:
            ours_rates.append(ours(url_for(v), args.n))
        with vhost("bench-pub") as v:
            celery_rates.append(celery(url_for(v), args.n))
        print(f"run {run + 1}: utilitarian {ours_rates[-1]:,.0f}/s   celery {celery_rates[-1]:,.0f}/s")
    o, c = median(ours_rates), median(celery_rates)
    print(f"confirmed publish of {args.n:,} task messages, median of {args.runs} runs:")
    print(f"  utilitarian (pipelined confirms) {o:10,.0f} msg/s")
    print(f"  celery send_task confirm_publish {c:10,.0f} msg/s")
    print(f"  ratio {o / c:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
