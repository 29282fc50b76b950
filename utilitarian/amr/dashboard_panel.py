"""AMR's panel on the status page (the `utilitarian.dashboard_panels` plugin `rounds`): the recent
rounds as progress bars with rate, ETA and the failed meters with their reasons, from the store
(the numbers `status --json` prints). Raises when the store cannot be read: the page shows it."""

from __future__ import annotations

import datetime as dt
import re

ROUNDS = 6        # most recent rounds shown
FAILURES = 12     # failed meters listed per round; the rest are counted


def rounds_panel(config, now: dt.datetime) -> dict:
    from utilitarian.amr.progress import foreign_store_note, status_rounds

    note = foreign_store_note(config, "utilitarian dashboard")
    if note:
        raise PermissionError(note)
    found = status_rounds(config, now, limit=ROUNDS, failures=FAILURES)
    bars = [bar_of(doc, line) for doc, line in zip(found["progress_numbers"], found["rounds"])]
    return {"title": "Rounds", "bars": bars,
            "note": None if bars else "no round dispatched yet (the beat fires them on schedule)"}


def bar_of(doc: dict, line: str) -> dict:
    """One round's numbers as a bar of the page's panel vocabulary (pure)."""
    failures = [{"name": f["meter"] + (f" ({f['task']})" if f.get("task") else ""), "reason": f["error"] or "failed"}
                for f in doc.get("failures", [])]
    head, _, rest = line.partition(": ")
    rest = re.sub(r" \([\d,]+ failed\)$", "", rest)  # the bar's counts say it already
    return {"id": doc["round"], "label": head, "state": doc["state"], "total": doc["total"], "done": doc["done"],
            "failed": doc["failed"], "pending": doc["pending"], "eta": doc["eta"],
            "text": rest.split(", ", 1)[1] if ", " in rest else rest,
            "failures": failures, "failures_more": max(0, doc["failed"] - len(failures))}
