"""What the master tells operators, from the supervision state: the `utilitarian status` document
(per child state, ready, consuming or why not, reconnects, cancels; restarts by cause) and metrics."""

from __future__ import annotations

from utilitarian.supervisor.stats import totals_of
from utilitarian.supervisor.supervision import CAUSES, CHILD_COUNTERS, Supervisor


def by_cause(counter) -> dict[str, int]:
    return {cause: int(counter.get(cause, 0)) for cause in CAUSES}


def children_status(sup: Supervisor, now: float) -> list[dict]:
    out = []
    for c in sorted(sup.children.values(), key=lambda c: (c.pool, c.started)):
        totals = totals_of(c.stats)
        out.append({
            "pid": c.pid, "pool": c.pool, "state": c.state.value, "ready": c.ready, "consuming": c.consuming,
            "why": c.why, "replaces": c.replaces, **{key: c.counters[key] for key in CHILD_COUNTERS},
            "pending_later": c.pending_later,
            "rss": c.rss, "done": totals["done"], "failed": totals["failed"], "retried": totals["retried"],
            "refused": totals["refused"], "inflight": c.inflight, "uptime": round(now - c.started, 1),
            "heartbeat_age": round(now - c.last_seen, 2)})
    return out


def status_doc(sup: Supervisor, now: float, *, pid: int, started_wall: float) -> dict:
    return {
        "worker": sup.plan.name, "pid": pid, "profile": sup.plan.profile,
        "uptime": round(now - sup.started, 1), "started": started_wall,
        "state": f"stopping ({sup.stop})" if sup.stop else "running",
        "pools": [{"name": p.spec.name, "queues": list(p.spec.queues), "processes": p.spec.processes,
                   "configured_queues": list(p.configured.queues), "configured_processes": p.configured.processes,
                   "threads": p.spec.threads, "restarts": by_cause(p.restarts)} for p in sup.pools.values()],
        "drained": sorted(sup.drained),
        "children": children_status(sup, now), "totals": sup.stats.totals(),
        "rate_per_s": round(sup.stats.rate(), 2),
        # `restarts`: unexpected exits (crashes and heartbeat kills), as before; by cause: every
        # replacement, planned ones (reload, recycling, hard time limit) included.
        "restarts": sup.restarts["crash"] + sup.restarts["heartbeat"],
        "restarts_by_cause": by_cause(sup.restarts),
        "reconnects": sup.counter_total("reconnects"), "consumer_cancels": sup.counter_total("cancels"),
        "dead_letter_failures": sup.counter_total("dead_letter_failures"), "ever_ready": sup.ever_ready,
        "reload_error": sup.reload_error, "reloads": {"ok": sup.reloads["ok"], "failed": sup.reloads["failed"]},
    }


def metrics_text(sup: Supervisor, now: float, *, observed: dict | None = None) -> str:
    from utilitarian import telemetry
    from utilitarian.supervisor.metrics import render, render_fleet_view

    counts, hist = sup.stats.merged()
    unexpected = sup.restarts["crash"] + sup.restarts["heartbeat"]
    children = children_status(sup, now)
    text = render(sup.plan.name, counts, hist, children, unexpected,
                  by_pool={name: by_cause(p.restarts) for name, p in sup.pools.items()},
                  totals={"reconnects": sup.counter_total("reconnects"),
                          "consumer_cancels": sup.counter_total("cancels"),
                          "dead_letter_failures": sup.counter_total("dead_letter_failures")})
    pools = [(name, p.spec.processes, sum(1 for c in children if c["pool"] == name and c["consuming"]))
             for name, p in sup.pools.items()]
    lines = render_fleet_view(sup.plan.name, sup.plan.profile, pools, observed or {}, now,
                              crashes_in_window=len(sup.crash_times), crash_loop_limit=sup.limits.crash_loop_limit)
    lines += telemetry.render(sup.plan.name, sup.telemetry)
    return text + "\n".join(lines) + "\n"
