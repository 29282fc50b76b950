"""Load on `utilitarian dashboard`: N browsers polling /api/state as fast as they can while M
stuck clients hold connections open, on a real broker (a throw-away vhost with the topology).
Prints requests per second, latency p50/p99/max, and how long one collection takes (the broker's
passive declares, the beat lock, fleet control, the store): what every browser waits for at most.

    .venv/bin/python bench/dashboard_load.py [--clients 20] [--stuck 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
import urllib.request

from common import tmpdir, url_for, vhost, write_config

from utilitarian.broker.connection import settings_from_config
from utilitarian.broker.topology import declare_topology
from utilitarian.config import load_config
from utilitarian.dashboard import server
from utilitarian.dashboard.collector import Collector


def poll(url: str, until: float, latencies: list[float]) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
        latencies.append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--stuck", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with vhost("dashboard") as name:
        directory = tmpdir()
        config = load_config(str(write_config(directory, url_for(name),
                                              f'[database]\nurl = "sqlite:///{directory}/amr.sqlite3"\n')))
        declare_topology(settings_from_config(config))
        collector = Collector(config)
        durations = []
        for _ in range(10):
            started = time.perf_counter()
            collector.refresh()
            durations.append(time.perf_counter() - started)
        collector.broker.close()
        running = server.start(config, port=0)
        port = running.server.server_address[1]
        stuck = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.stuck)]
        for s in stuck:
            s.sendall(b"GET /api/state HTTP/1.1\r\n")
        latencies: list[float] = []
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=poll, args=(running.url + "api/state", until, latencies))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in stuck:
            s.close()
        running.stop()
    latencies.sort()
    print(f"collection (queues, beat lock, store; fleet control in the first, then every 5 s), 10 runs: "
          f"median {statistics.median(durations) * 1000:.0f} ms, max {max(durations) * 1000:.0f} ms")
    print(f"{args.clients} clients polling /api/state for {args.seconds:g} s beside {args.stuck} stuck connections: "
          f"{len(latencies) / args.seconds:,.0f} requests/s, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
