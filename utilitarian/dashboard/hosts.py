"""Hosts and pools for the dashboard, behind one function, `fleet(config)`: every worker master and
beat on the broker (fleet control, what `utilitarian status --all` asks), grouped by host, silent
members included. When the broker cannot be asked, this host's workers still answer on their
control sockets (what `utilitarian status` asks), and the page says which source it shows."""

from __future__ import annotations

import socket

FLEET_TIMEOUT = 1.5  # seconds members get to answer; a member that does not is listed as silent


def fleet(config) -> dict:
    """{"hosts": [{"host", "workers": [...], "beats": [...]}], "silent": [...], "source", "note"}."""
    from utilitarian.errors import BrokerError
    from utilitarian.fleet.inspect import inspect_fleet

    try:
        reports = inspect_fleet(config, FLEET_TIMEOUT)
    except BrokerError as exc:
        local = local_fleet(config)
        local["note"] = f"fleet control unavailable ({exc}); showing this host's workers only"
        return local
    return {**group_reports(reports), "source": "fleet control over the broker", "note": None}


def group_reports(reports: list[dict]) -> dict:
    """Member reports (fleet/report.py) as the page's hosts (pure)."""
    hosts: dict[str, dict] = {}
    silent = []
    for r in reports:
        name = str(r.get("host") or "?")
        host = hosts.setdefault(name, {"host": name, "workers": [], "beats": []})
        if r.get("state") != "answering":
            silent.append({"where": f"{r.get('kind')} {r.get('member')} on {host['host']}",
                           "error": r.get("why") or r.get("state")})
        elif r.get("kind") == "beat":
            status = r.get("status") or {}
            host["beats"].append({"name": r.get("member"), "identity": status.get("identity"), "role": r.get("role"),
                                  "since": r.get("leader_since"), "fired": r.get("fired", 0),
                                  "last_error": r.get("last_error")})
        else:
            row = worker_row(r.get("status") or {})
            row.update(name=r.get("member") or row["name"], consuming=r.get("consuming"),
                       last_error=r.get("last_error"), version=r.get("version"))
            host["workers"].append(row)
    return {"hosts": [hosts[h] for h in sorted(hosts)], "silent": silent}


def local_fleet(config) -> dict:
    """This host's worker masters over their control sockets."""
    from utilitarian.supervisor.control import discover, query

    rows, silent = [], []
    for path in discover(config.runtime_dir()):
        try:
            rows.append(worker_row(query(path, timeout=2.0)))
        except (OSError, ValueError) as exc:
            silent.append({"where": path, "error": str(exc) or type(exc).__name__})
    hosts = [{"host": socket.gethostname(), "workers": rows, "beats": []}] if rows else []
    return {"hosts": hosts, "silent": silent, "source": "control sockets of this host"}


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
