"""Progress of dispatched rounds, computed from the store: done / failed / pending per round, the
recent completion rate and an ETA. `utilitarian status` and the demo print `format_progress`;
`status --json` carries `progress_numbers`. Also the `utilitarian.idle_probes` plugin
`pending_later`: a worker started with --exit-when-idle waits while a round's jobs are still to come.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

UTC = dt.timezone.utc
RATE_WINDOW = 120.0  # seconds of completions the rate of a running round is measured over


@dataclass(frozen=True)
class RoundProgress:
    round_id: str
    schedule: str
    slot: dt.datetime
    jobs: int
    done: int
    failed: int
    dispatched_at: dt.datetime
    dispatch_seconds: float
    rate_per_min: float | None          # completions per minute (recent, or overall when finished)
    eta_seconds: float | None           # None when finished or no rate yet
    elapsed_seconds: float | None       # dispatch to last completion (finished rounds)

    @property
    def pending(self) -> int:
        return max(0, self.jobs - self.done - self.failed)

    @property
    def finished(self) -> bool:
        return self.pending == 0


def round_progress(store, now: dt.datetime | None = None, *, limit: int = 10,
                   window: float = RATE_WINDOW) -> list[RoundProgress]:
    """The `limit` most recent rounds, newest first."""
    now = now or dt.datetime.now(UTC)
    out = []
    for c in store.round_counts(limit=limit, now=now, window=window):
        rnd = c.round
        finished = c.done + c.failed
        pending = max(0, rnd.jobs - finished)
        rate = eta = elapsed = None
        if finished and c.first_finished is not None:
            start = min(rnd.dispatched_at, c.first_finished)
            if pending == 0:
                elapsed = max(0.0, (c.last_finished - rnd.dispatched_at).total_seconds())
                rate = finished / max(elapsed, 1.0) * 60.0
            else:
                span = min(window, max(1.0, (now - start).total_seconds()))
                recent = c.recent if (now - start).total_seconds() > window else finished
                rate = recent / span * 60.0
                eta = pending / (rate / 60.0) if rate > 0 else None
        out.append(RoundProgress(rnd.id, rnd.schedule, rnd.slot, rnd.jobs, c.done, c.failed, rnd.dispatched_at,
                                 rnd.dispatch_seconds, rate, eta, elapsed))
    return out


def _slot_text(slot: dt.datetime) -> str:
    slot = slot.astimezone(UTC)
    return slot.strftime("%Y-%m-%dT%H:%MZ") if slot.second == 0 else slot.strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def format_progress(rounds: list[RoundProgress]) -> list[str]:
    """One line per round, e.g.
    `daily 2026-11-24T00:00Z: 7,312 of 10,000, 412/min, about 6 min left (3 failed)`."""
    lines = []
    for p in rounds:
        head = f"{p.schedule} {_slot_text(p.slot)}: {p.done + p.failed:,} of {p.jobs:,}"
        parts = [head]
        if p.finished:
            parts.append(f"finished in {_duration(p.elapsed_seconds or 0.0)}" if p.jobs else "no jobs")
        else:
            if p.rate_per_min is not None:
                parts.append(f"{p.rate_per_min:,.0f}/min")
            parts.append(f"about {_duration(p.eta_seconds)} left" if p.eta_seconds is not None else "starting")
        line = ", ".join(parts)
        if p.failed:
            line += f" ({p.failed:,} failed)"
        lines.append(line)
    return lines


def progress_for_status(config, now: dt.datetime | None = None, *, limit: int = 10) -> list[str]:
    """Lines for `utilitarian status`: the recent rounds of this installation's store. A host with
    no SQLite store yet (it only runs workers elsewhere) has none; nothing is created for asking."""
    return status_rounds(config, now, limit=limit)["rounds"]


def progress_numbers(rounds: list[RoundProgress], now: dt.datetime | None = None) -> list[dict]:
    """The same rounds as numbers, for `status --json`: counts of jobs (total, done, failed,
    pending), when the round started (dispatched), its rate, and the ETA as seconds and a time."""
    now = now or dt.datetime.now(UTC)
    out = []
    for p in rounds:
        eta_at = now + dt.timedelta(seconds=p.eta_seconds) if p.eta_seconds is not None else None
        out.append({"round": p.round_id, "schedule": p.schedule, "slot": _iso(p.slot),
                    "state": "finished" if p.finished else ("running" if p.done + p.failed else "starting"),
                    "total": p.jobs, "done": p.done, "failed": p.failed, "pending": p.pending,
                    "started": _iso(p.dispatched_at), "rate_per_min": _round(p.rate_per_min),
                    "eta_seconds": _round(p.eta_seconds), "eta": _iso(eta_at) if eta_at else None,
                    "elapsed_seconds": _round(p.elapsed_seconds)})
    return out


def _iso(moment: dt.datetime) -> str:
    from utilitarian.amr.model import iso_utc

    return iso_utc(moment.replace(microsecond=0))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def status_rounds(config, now: dt.datetime | None = None, *, limit: int = 10, failures: int = 0) -> dict:
    """`utilitarian status`'s part about rounds: `rounds` (lines) and `progress_numbers` (per
    round: total, done, failed, pending, started, eta, ...). Empty on a host without a store.
    With `failures`, each round's numbers list up to that many failed jobs (meter, task, error)."""
    import os

    from utilitarian.amr.store import Store, check_version
    from utilitarian.amr.store.backend import SqliteBackend, open_backend

    now = now or dt.datetime.now(UTC)
    backend = open_backend(config.database_url(), pool_size=1, timeout=config.amr.store_timeout)
    if isinstance(backend, SqliteBackend) and not os.path.exists(backend.path):
        return {"rounds": [], "progress_numbers": []}
    with Store(backend) as store:
        check_version(backend)
        rounds = round_progress(store, now, limit=limit)
        numbers = progress_numbers(rounds, now)
        for p, doc in zip(rounds, numbers):
            if failures and p.failed:
                doc["failures"] = [{"meter": r.meter, "task": r.amr_task, "error": r.error}
                                   for r in store.list_runs(p.round_id, outcome="failed", limit=failures)]
    return {"rounds": format_progress(rounds), "progress_numbers": numbers}


def foreign_store_note(config, command: str) -> str | None:
    """Opening another user's SQLite store could leave files it cannot use (a WAL created by
    root): say whom to run as instead of touching it."""
    import os
    import pwd

    url = config.database_url()
    if not url.startswith("sqlite:"):
        return None
    path = url.split(":///", 1)[-1]
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return None
    if owner == os.geteuid():
        return None
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    return f"round progress: run as the store's owner (sudo -u {name} {command})"


PENDING_GRACE = 3600.0  # a round silent this long with jobs pending is not waited for


def pending_later(app, queues) -> bool:
    """The `utilitarian.idle_probes` plugin: True while a round of a schedule whose queue is among
    `queues` has jobs still to come (waiting for their run offset, or on their way). Runs on the
    child's probe thread, never on its pump."""
    from utilitarian import queues as q
    from utilitarian.amr.store import store_for

    served = set(queues)
    schedules = [name for name, queue in q.SCHEDULE_QUEUES.items() if queue in served]
    if not schedules:
        return False
    return bool(store_for(app).rounds_with_work_ahead(schedules, now=dt.datetime.now(UTC), grace=PENDING_GRACE))
