"""What the page shows, decided in pure code: queue rates from successive depth samples, the next
fires of the schedule, and the beat section. Time is passed in; nothing here does I/O."""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field

UTC = dt.timezone.utc
RATE_WINDOW = 30.0  # seconds of depth samples a queue's rate is measured over
GROWING = 0.1  # messages per second of net growth that the page marks as "growing"
FIRES_PER_ENTRY = 3


def iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class QueueHistory:
    """Depth samples per queue, (monotonic seconds, messages), the last `window` seconds of them."""

    window: float = RATE_WINDOW
    samples: dict[str, deque] = field(default_factory=dict)

    def add(self, name: str, mono: float, messages: int | None) -> None:
        series = self.samples.setdefault(name, deque())
        if messages is None:  # a deleted queue starts its history again
            series.clear()
            return
        series.append((mono, messages))
        # Keep one sample older than the window so the rate spans the whole window.
        while len(series) > 2 and mono - series[1][0] >= self.window:
            series.popleft()

    def rate(self, name: str) -> float | None:
        """Net messages per second (positive: growing, negative: draining); None before two samples."""
        series = self.samples.get(name)
        if not series or len(series) < 2:
            return None
        (t0, m0), (t1, m1) = series[0], series[-1]
        return (m1 - m0) / (t1 - t0) if t1 > t0 else None


def queue_rows(states, history: QueueHistory, mono: float) -> list[dict]:
    """One row per queue: depth, consumers, net rate; `missing` when the queue does not exist."""
    rows = []
    for s in states:
        history.add(s.name, mono, s.messages)
        rate = history.rate(s.name)
        rows.append({"name": s.name, "short": s.name.removeprefix("utilitarian.tasks."),
                     "missing": s.messages is None, "messages": s.messages, "consumers": s.consumers,
                     "rate_per_s": None if rate is None else round(rate, 2),
                     "warning": _queue_warning(s.messages, s.consumers, rate)})
    return rows


def _queue_warning(messages, consumers, rate) -> str | None:
    if messages is None:
        return "queue missing: run `utilitarian topology declare`"
    if messages and not consumers:
        return "messages waiting and no consumer"
    if rate is not None and rate >= GROWING and messages:
        return "growing"
    return None


def next_fires(schedule: dict, now: dt.datetime, *, count: int = FIRES_PER_ENTRY) -> list[dict]:
    """Per enabled `[schedule.*]` entry: cron, zone, task and its next `count` slots, soonest entry first."""
    from utilitarian.beat.cron import CronSchedule

    rows = []
    for name, raw in schedule.items():
        if not raw.enabled:
            continue
        cron = CronSchedule(raw.cron, raw.timezone)
        slots = cron.slots_between(now, dt.datetime.max.replace(tzinfo=UTC), limit=count)
        rows.append({"name": name, "cron": raw.cron, "timezone": raw.timezone, "task": raw.task,
                     "next": [iso(s) for s in slots],
                     "in_seconds": round((slots[0] - now).total_seconds(), 1) if slots else None})
    rows.sort(key=lambda r: (r["next"][0] if r["next"] else "~", r["name"]))
    return rows


def beat_section(view) -> dict:
    """The beat's leader, or its absence, which an operator must act on."""
    if view.held:
        leader = view.holder or "a beat (not yet announced)"
        note = None
    else:
        leader = None
        note = "no beat leads: nothing is fired (start `utilitarian beat` or check utilitarian-beat.service)"
    return {"leader": leader, "held": view.held, "since": iso(view.since), "heard": iso(view.heard),
            "note": note}


def leader_from_fleet(beat: dict, fleet: dict) -> dict:
    """The lock says whether a beat leads; its announcement (every 5 s) or, sooner, the beat's own
    answer to fleet control says which one."""
    if not beat.get("ok") or not beat.get("held") or beat.get("since"):
        return beat
    leaders = [b for host in fleet.get("hosts", []) for b in host.get("beats", []) if b.get("role") == "leader"]
    if len(leaders) != 1 or not leaders[0].get("identity"):
        return beat
    return {**beat, "leader": leaders[0]["identity"], "since": leaders[0].get("since")}


def section(build, *args) -> dict:
    """Run one source; its failure becomes the section's error, never the page's."""
    try:
        return {"ok": True, **build(*args)}
    except Exception as exc:  # any source may fail (broker down, store locked): the page shows it
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)}
