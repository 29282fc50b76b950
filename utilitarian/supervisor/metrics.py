"""Prometheus text exposition of a worker's counters, served over plain HTTP by the master's
loop (no thread, no dependency): tasks by queue/task/outcome, durations, children, RSS."""

from __future__ import annotations

import socket

from utilitarian.supervisor.control import serve_pending
from utilitarian.supervisor.stats import BUCKETS


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(worker: str, counts, hist, children: list[dict], restarts: int) -> str:
    w = _label(worker)
    lines = ["# HELP utilitarian_tasks_total Tasks finished, by queue, task and outcome.",
             "# TYPE utilitarian_tasks_total counter"]
    for (queue, task, outcome), n in sorted(counts.items()):
        lines.append(f'utilitarian_tasks_total{{worker="{w}",queue="{_label(queue)}",task="{_label(task)}",'
                     f'outcome="{outcome}"}} {n}')
    lines += ["# HELP utilitarian_task_duration_seconds Task run time.",
              "# TYPE utilitarian_task_duration_seconds histogram"]
    for (queue, task), (buckets, total, count) in sorted(hist.items()):
        base = f'worker="{w}",queue="{_label(queue)}",task="{_label(task)}"'
        cumulative = 0
        for bound, n in zip(BUCKETS, buckets):
            cumulative += n
            lines.append(f'utilitarian_task_duration_seconds_bucket{{{base},le="{bound}"}} {cumulative}')
        cumulative += buckets[-1]
        lines.append(f'utilitarian_task_duration_seconds_bucket{{{base},le="+Inf"}} {cumulative}')
        lines.append(f"utilitarian_task_duration_seconds_sum{{{base}}} {total}")
        lines.append(f"utilitarian_task_duration_seconds_count{{{base}}} {count}")
    lines += ["# HELP utilitarian_children Worker children by pool and state.", "# TYPE utilitarian_children gauge"]
    states: dict[tuple[str, str], int] = {}
    for c in children:
        states[(c["pool"], c["state"])] = states.get((c["pool"], c["state"]), 0) + 1
    for (pool, state), n in sorted(states.items()):
        lines.append(f'utilitarian_children{{worker="{w}",pool="{_label(pool)}",state="{state}"}} {n}')
    lines += ["# HELP utilitarian_child_rss_bytes Resident memory per child.", "# TYPE utilitarian_child_rss_bytes gauge"]
    for c in children:
        if c.get("rss") is not None:
            lines.append(f'utilitarian_child_rss_bytes{{worker="{w}",pool="{_label(c["pool"])}",pid="{c["pid"]}"}} {c["rss"]}')
    lines += ["# HELP utilitarian_child_in_flight Tasks running per child.", "# TYPE utilitarian_child_in_flight gauge"]
    for c in children:
        lines.append(f'utilitarian_child_in_flight{{worker="{w}",pool="{_label(c["pool"])}",pid="{c["pid"]}"}} {c["inflight"]}')
    lines += ["# HELP utilitarian_child_restarts_total Children respawned after an unexpected exit.",
              "# TYPE utilitarian_child_restarts_total counter",
              f'utilitarian_child_restarts_total{{worker="{w}"}} {restarts}']
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self, body_factory) -> None:
        def serve(conn: socket.socket) -> None:
            request = conn.recv(4096).decode("latin-1")
            path = request.split(" ", 2)[1] if request.count(" ") >= 2 else "/"
            if path.split("?")[0] in ("/metrics", "/"):
                body = body_factory().encode()
                head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            else:
                body = b"not found\n"
                head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            conn.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

        serve_pending(self.sock, serve, "metrics")

    def close(self) -> None:
        self.sock.close()
