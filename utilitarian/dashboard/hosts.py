"""Hosts and pools for the dashboard, behind one function, `fleet(config)`: every worker master
that answers, grouped by host, with its pools and how many children consume. Today it asks the
control sockets of this host (what `utilitarian status` asks); the broker-wide inspection of
`utilitarian status --all` replaces the source here without touching the page."""

from __future__ import annotations

import socket


def fleet(config) -> dict:
    """{"hosts": [{"host", "workers": [...]}], "silent": [{"where", "error"}], "source"}."""
    from utilitarian.supervisor.control import discover, query

    docs, silent = [], []
    for path in discover(config.runtime_dir()):
        try:
            doc = query(path, timeout=2.0)
        except (OSError, ValueError) as exc:
            silent.append({"where": path, "error": str(exc) or type(exc).__name__})
            continue
        doc.setdefault("host", socket.gethostname())
        docs.append(doc)
    return {"hosts": group_by_host(docs), "silent": silent, "source": "control sockets of this host"}


def group_by_host(docs: list[dict]) -> list[dict]:
    hosts: dict[str, list[dict]] = {}
    for doc in docs:
        hosts.setdefault(str(doc.get("host") or "?"), []).append(worker_row(doc))
    return [{"host": host, "workers": sorted(rows, key=lambda w: (w["name"], w["pid"]))}
            for host, rows in sorted(hosts.items())]


def worker_row(doc: dict) -> dict:
    """One worker master's status document as the page shows it (pure)."""
    children = doc.get("children") or []
    pools = []
    for pool in doc.get("pools") or []:
        mine = [c for c in children if c.get("pool") == pool.get("name")]
        pools.append({"name": pool.get("name"), "queues": list(pool.get("queues", [])),
                      "processes": pool.get("processes"), "threads": pool.get("threads"), "children": len(mine),
                      "consuming": sum(1 for c in mine if c.get("consuming", c.get("ready"))),
                      "inflight": sum(int(c.get("inflight") or 0) for c in mine),
                      "why": sorted({c["why"] for c in mine if c.get("why") and not c.get("consuming")})})
    totals = doc.get("totals") or {}
    return {"name": doc.get("worker") or doc.get("profile") or "?", "profile": doc.get("profile"),
            "pid": doc.get("pid"), "state": doc.get("state"), "uptime": doc.get("uptime"),
            "rate_per_s": doc.get("rate_per_s"), "done": totals.get("done", 0), "failed": totals.get("failed", 0),
            "restarts": doc.get("restarts", 0), "pools": pools}
