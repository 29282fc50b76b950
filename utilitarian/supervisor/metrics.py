"""Prometheus text exposition of a worker's counters, served over plain HTTP by the master's
loop (no thread, no dependency, never waiting on a client): tasks by queue/task/outcome,
durations, children (state, consuming, RSS), restarts by cause, reconnects and consumer cancels."""

from __future__ import annotations

import socket

from utilitarian.supervisor.clients import ClientServer
from utilitarian.supervisor.stats import BUCKETS


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(worker: str, counts, hist, children: list[dict], restarts: int, *, by_pool: dict | None = None,
           totals: dict | None = None) -> str:
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
    lines += ["# HELP utilitarian_child_consuming 1 while the child consumes its queues, 0 while it does not.",
              "# TYPE utilitarian_child_consuming gauge"]
    for c in children:
        lines.append(f'utilitarian_child_consuming{{worker="{w}",pool="{_label(c["pool"])}",pid="{c["pid"]}"}} '
                     f'{1 if c.get("consuming") else 0}')
    lines += ["# HELP utilitarian_child_restarts_total Children respawned after an unexpected exit.",
              "# TYPE utilitarian_child_restarts_total counter",
              f'utilitarian_child_restarts_total{{worker="{w}"}} {restarts}']
    lines += ["# HELP utilitarian_child_replacements_total Children replaced, by pool and cause (crash, "
              "hard_time_limit, max_tasks, max_memory, heartbeat, reload).",
              "# TYPE utilitarian_child_replacements_total counter"]
    for pool, causes in sorted((by_pool or {}).items()):
        for cause, n in causes.items():
            labels = f'worker="{w}",pool="{_label(pool)}",cause="{cause}"'
            lines.append(f"utilitarian_child_replacements_total{{{labels}}} {n}")
    for key, name, text in (("reconnects", "utilitarian_reconnects_total", "Broker reconnections of the children."),
                            ("consumer_cancels", "utilitarian_consumer_cancels_total",
                             "Consumers cancelled by the broker (queue deleted, node down)."),
                            ("dead_letter_failures", "utilitarian_dead_letter_failures_total",
                             "Dead-letter publishes that failed (the message was requeued).")):
        if totals is not None and key in totals:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f'{name}{{worker="{w}"}} {totals[key]}']
    return "\n".join(lines) + "\n"


def port_for(base: int | None, profiles, profile: str | None) -> int | None:
    """The metrics port of one worker: `[worker] metrics_port` for a worker without a profile, that
    plus the profile's position (1, 2, ...) in the TOML file for a profile, so that every profile of
    a host has a port of its own (0 stays 0: any free port)."""
    if not base or profile is None:
        return base
    names = list(profiles)
    return base + 1 + names.index(profile) if profile in names else base


OBSERVED_STALE = 30.0  # seconds: older broker observations of the control agent are not shown


def render_fleet_view(worker: str, profile: str | None, pools, observed: dict, now: float, *,
                      crashes_in_window: int, crash_loop_limit: int) -> list[str]:
    """The worker's identity, pools (wanted / consuming), crash-loop state, and what its control
    agent sees of the broker: connected or not, and queue depths. Observations older than
    OBSERVED_STALE (agent gone or hung) count as disconnected, without depths."""
    from utilitarian import __version__
    from utilitarian.hostname import host_name

    w = _label(worker)
    lines = ["# HELP utilitarian_worker_info The worker's identity (value 1).", "# TYPE utilitarian_worker_info gauge",
             f'utilitarian_worker_info{{worker="{w}",profile="{_label(profile or "")}",host="{_label(host_name())}",'
             f'version="{__version__}"}} 1',
             "# HELP utilitarian_pool_processes Children a pool should run (0 while all its queues are drained).",
             "# TYPE utilitarian_pool_processes gauge"]
    lines += [f'utilitarian_pool_processes{{worker="{w}",pool="{_label(n)}"}} {wanted}' for n, wanted, _ in pools]
    lines += ["# HELP utilitarian_pool_consuming_children Children of a pool consuming their queues now.",
              "# TYPE utilitarian_pool_consuming_children gauge"]
    lines += [f'utilitarian_pool_consuming_children{{worker="{w}",pool="{_label(n)}"}} {c}' for n, _, c in pools]
    lines += ["# HELP utilitarian_crash_loop_crashes Child crashes within the crash-loop window (the master "
              "stops with exit 70 at utilitarian_crash_loop_limit).", "# TYPE utilitarian_crash_loop_crashes gauge",
              f'utilitarian_crash_loop_crashes{{worker="{w}"}} {crashes_in_window}',
              "# HELP utilitarian_crash_loop_limit Crashes within the window that stop the worker.",
              "# TYPE utilitarian_crash_loop_limit gauge", f'utilitarian_crash_loop_limit{{worker="{w}"}} {crash_loop_limit}']
    fresh = bool(observed) and now - float(observed.get("at", float("-inf"))) <= OBSERVED_STALE
    connected = 1 if fresh and observed.get("connected") else 0
    lines += ["# HELP utilitarian_broker_connected 1 while the worker's control agent holds a broker connection "
              "(0: broker down, refused, or the agent not reporting).", "# TYPE utilitarian_broker_connected gauge",
              f'utilitarian_broker_connected{{worker="{w}"}} {connected}']
    if fresh and connected:
        lines += ["# HELP utilitarian_queue_messages Messages ready in a queue this worker consumes (and the "
                  "dead-letter queue), read by passive declare every 10 s.", "# TYPE utilitarian_queue_messages gauge"]
        rows = [r for r in observed.get("queues") or () if isinstance(r, list) and len(r) == 3 and r[1] is not None]
        lines += [f'utilitarian_queue_messages{{worker="{w}",queue="{_label(q)}"}} {m}' for q, m, _ in rows]
        lines += ["# HELP utilitarian_queue_consumers Consumers of that queue on the broker (every worker's).",
                  "# TYPE utilitarian_queue_consumers gauge"]
        lines += [f'utilitarian_queue_consumers{{worker="{w}",queue="{_label(q)}"}} {c}' for q, _, c in rows]
    return lines


class MetricsServer(ClientServer):
    what = "metrics"

    def __init__(self, host: str, port: int):
        super().__init__(socket.create_server((host, port), reuse_port=False, backlog=64))
        self.port = self.sock.getsockname()[1]
        self.where = f"http://{host}:{self.port}/metrics"

    def complete(self, data: bytes, eof: bool) -> bool:
        return b"\r\n\r\n" in data or b"\n\n" in data or (eof and bool(data))

    def respond(self, data: bytes, handler) -> bytes:
        """`handler() -> str`, the exposition text, for GET / and /metrics."""
        request = data.split(b"\n", 1)[0].decode("latin-1")
        path = request.split(" ", 2)[1] if request.count(" ") >= 2 else "/"
        if path.split("?")[0] in ("/metrics", "/"):
            body = handler().encode()
            head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        else:
            body = b"not found\n"
            head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
        return f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
