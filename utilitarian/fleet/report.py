"""One report per fleet member, from its reply or from its last announcement (silent), in the
shape `status --all --json` prints and the status page reads: host, profile, version, pools,
children, in flight, processed, failed, retired, consuming (or why not), last error. Pure."""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def _base(src: dict, state: str) -> dict:
    return {"member": src.get("member"), "kind": src.get("kind"), "host": src.get("host"),
            "profile": src.get("profile"), "pid": src.get("pid"), "version": src.get("version"), "state": state}


def member_report(reply: dict) -> dict:
    doc = reply.get("doc") or {}
    if not reply.get("ok"):
        report = _base(reply, "silent" if doc.get("silent") else "error")
        report["why"] = reply.get("error")
        return report
    report = _base(reply, "answering")
    if reply.get("kind") == "beat":
        report.update(beat_summary(doc))
    else:
        report.update(worker_summary(doc))
    report["status"] = doc
    return report


def silent_report(announcement: dict, now: float) -> dict:
    report = _base(announcement, "silent")
    at = float(announcement.get("at") or 0.0)
    report["announced"] = at
    report["why"] = f"no answer in time; last announced {max(0, int(now - at))}s ago"
    return report


def worker_summary(doc: dict) -> dict:
    children = doc.get("children") or []
    totals = doc.get("totals") or {}
    restarts = doc.get("restarts_by_cause") or {}
    last = doc.get("last_error")
    return {
        "pools": [{"name": p.get("name"), "queues": p.get("queues", []),
                   "configured_queues": p.get("configured_queues", p.get("queues", [])),
                   "processes": p.get("processes"), "threads": p.get("threads")} for p in doc.get("pools") or []],
        "children": len(children),
        "in_flight": sum(int(c.get("inflight") or 0) for c in children),
        "processed": sum(int(totals.get(k) or 0) for k in ("done", "failed", "retried", "refused", "deferred")),
        "failed": int(totals.get("failed") or 0),
        "retired": sum(int(n or 0) for n in restarts.values()),
        "consuming": consuming_text(doc),
        "drained": doc.get("drained") or [],
        "last_error": last.get("message") if isinstance(last, dict) else None,
        "worker_state": doc.get("state"),
    }


def consuming_text(doc: dict) -> str:
    """"yes", or why not: the first child that does not consume, and drained queues."""
    children = doc.get("children") or []
    wanted = sum(int(p.get("processes") or 0) for p in doc.get("pools") or [])
    consuming = [c for c in children if c.get("consuming")]
    notes = []
    drained = doc.get("drained") or []
    if drained:
        notes.append("drained " + ", ".join(q.removeprefix("utilitarian.tasks.") for q in drained))
    if str(doc.get("state", "running")) != "running":
        notes.append(str(doc["state"]))
    if len(consuming) >= wanted and wanted > 0:
        return "yes" + (f" ({'; '.join(notes)})" if notes else "")
    if not wanted and drained:
        return "no: " + "; ".join(notes)
    why = next((c.get("why") for c in children if not c.get("consuming") and c.get("why")), None)
    text = f"no: {len(consuming)}/{wanted} children consuming"
    if why:
        text += f", {why}"
    return "; ".join([text] + notes)


def beat_summary(doc: dict) -> dict:
    return {"role": doc.get("role"), "leader_since": doc.get("leader_since"), "holder": doc.get("holder"),
            "next_fire": doc.get("next_fire"), "fired": doc.get("fired", 0), "entries": doc.get("entries", 0),
            "consuming": "leader" if doc.get("role") == "leader" else f"{doc.get('role')}",
            "last_error": doc.get("last_error")}
