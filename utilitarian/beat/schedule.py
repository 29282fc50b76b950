"""Schedule entries from the config and the pure decision of what is due at a given `now`:
which slots fire, which are skipped as too late or coalesced, and the state that follows.
Nothing here reads a clock or talks to the broker."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

from utilitarian import queues
from utilitarian.beat.cron import CronSchedule
from utilitarian.beat.state import BeatState, EntryState
from utilitarian.errors import ConfigError, ConfigErrors

UTC = dt.timezone.utc
# A slot fired within this many seconds counts as on time whatever its misfire_grace: a loop
# that wakes a few milliseconds after the slot must not skip it when misfire_grace is 0.
ON_TIME = 1.0


@dataclass(frozen=True)
class Entry:
    """One enabled `[schedule.<name>]` entry, resolved: its cron in its zone and its queue."""

    name: str
    cron: CronSchedule = field(compare=False)
    task: str
    queue: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    expires: float | None = None
    misfire_grace: float = 300.0
    coalesce: bool = True
    slot_kwarg: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cron.expr, self.timezone)


def fingerprint(cron: str, timezone: str) -> str:
    """What makes two schedules the same: a changed cron or zone starts from now, not from the
    old schedule's last slot (which would replay history)."""
    return hashlib.sha256(f"{cron}|{timezone}".encode("utf-8")).hexdigest()[:16]


def entries_from_config(config, registry, *, include_disabled: bool = False) -> list[Entry]:
    """Enabled entries (all with `include_disabled`), validated against the task registry.

    Cron, zone, queue and grace were checked when the config was loaded; what only the registry
    knows (is the task name real, where does it route) is checked here. Raises ConfigErrors
    (exit 78) naming `schedule.<name>.task`.
    """
    errors: list[ConfigError] = []
    out: list[Entry] = []
    for name, raw in sorted(config.schedule.items()):
        if not raw.enabled and not include_disabled:
            continue
        if raw.task not in registry:
            if raw.enabled:
                errors.append(ConfigError(_unknown_task(raw.task, registry), file=config.source,
                                          key=f"schedule.{name}.task"))
            continue
        queue = queues.resolve(raw.queue) if raw.queue else registry.route(raw.task, config)
        out.append(Entry(
            name=name, cron=CronSchedule(raw.cron, raw.timezone), task=raw.task, queue=queue,
            args=tuple(raw.args), kwargs=dict(raw.kwargs), timezone=raw.timezone, expires=raw.expires,
            misfire_grace=float(raw.misfire_grace), coalesce=raw.coalesce, slot_kwarg=raw.slot_kwarg))
    if errors:
        raise ConfigErrors(errors)
    return out


def _unknown_task(task: str, registry) -> str:
    import difflib

    close = difflib.get_close_matches(task, registry.names(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; add its module to [worker] imports"
    return f"unknown task {task!r}{hint}"


@dataclass(frozen=True)
class Due:
    """One fire: an entry at one slot (UTC)."""

    entry: Entry
    slot: dt.datetime


@dataclass(frozen=True)
class Plan:
    fires: tuple[Due, ...]
    state: BeatState
    changed: bool  # the state differs from the one planned from (it must be written)
    notes: tuple[str, ...] = ()  # what an operator should read: skips, coalesced catch-ups, resets


def plan(entries: Sequence[Entry], state: BeatState, now: dt.datetime, *, max_catch_up: int = 1000,
         disabled: Collection[str] = ()) -> Plan:
    """What is due at `now` given `state`, and the state after firing it.

    Per entry: a slot fires at most once (only slots after `done_until` are considered, so a
    clock that steps back fires nothing twice); slots later than `misfire_grace` are skipped;
    of the rest, `coalesce` fires only the latest, otherwise all of them, at most `max_catch_up`
    (the latest). An entry without state, or whose cron/zone changed, starts from `now`.
    State of `disabled` entries is dropped (re-enabling one starts it from then, the paused time
    is not caught up); state of names this config does not know at all is kept.
    """
    fires: list[Due] = []
    notes: list[str] = []
    new: dict[str, EntryState] = {}
    changed = False
    known = {e.name for e in entries}
    for entry in entries:
        old = state.entries.get(entry.name)
        if old is None or old.fingerprint != entry.fingerprint:
            new[entry.name] = EntryState(now, entry.fingerprint)
            changed = True
            if old is not None:
                notes.append(f"entry {entry.name}: schedule changed; starts from {_iso(now)} (history not replayed)")
            continue
        done, entry_fires, entry_notes = _due_for(entry, old.done_until, now, max_catch_up)
        fires.extend(entry_fires)
        notes.extend(entry_notes)
        if done != old.done_until:
            changed = True
        new[entry.name] = EntryState(done, entry.fingerprint)
    for name, item in state.entries.items():
        if name in disabled:
            changed = True
        elif name not in known:
            new[name] = item
    fires.sort(key=lambda d: (d.slot, d.entry.name))
    next_state = BeatState(entries=new, foreign=state.foreign)
    return Plan(tuple(fires), next_state, changed, tuple(notes))


def _due_for(entry: Entry, done_until: dt.datetime, now: dt.datetime,
             max_catch_up: int) -> tuple[dt.datetime, list[Due], list[str]]:
    if now <= done_until:
        return done_until, [], []
    grace = max(entry.misfire_grace, ON_TIME)
    window_after = max(done_until, now - dt.timedelta(seconds=grace))
    # Coalescing needs only the latest slot: one backward step, however long the outage was.
    candidates = entry.cron.slots_before(now, window_after, limit=1 if entry.coalesce else max_catch_up)
    notes = []
    too_late = window_after > done_until and entry.cron.next_after(done_until) <= window_after
    if too_late:
        notes.append(f"entry {entry.name}: slots from {_iso(entry.cron.next_after(done_until))} to "
                     f"{_iso(window_after)} are later than misfire_grace {entry.misfire_grace:g}s; skipped")
    if not candidates:
        if too_late:
            latest = entry.cron.slots_before(window_after, done_until, limit=1)
            return (latest[-1] if latest else done_until), [], notes
        return done_until, [], notes
    first = entry.cron.next_after(window_after)
    if entry.coalesce:
        if first < candidates[-1]:
            notes.append(f"entry {entry.name}: missed slots from {_iso(first)} to {_iso(candidates[-1])} "
                         "coalesced into one fire at the latest")
    elif len(candidates) == max_catch_up and first < candidates[0]:
        notes.append(f"entry {entry.name}: more than max_catch_up={max_catch_up} missed slots; "
                     f"the ones before {_iso(candidates[0])} are skipped")
    if entry.expires is not None:
        # A catch-up fire already past its expiry would only be dead-lettered by the worker.
        live = [slot for slot in candidates if slot + dt.timedelta(seconds=entry.expires) > now]
        if len(live) < len(candidates):
            notes.append(f"entry {entry.name}: {len(candidates) - len(live)} missed slot(s) already expired "
                         f"(expires {entry.expires:g}s); not sent")
        if not live:
            return candidates[-1], [], notes
        done = candidates[-1]
        candidates = live
    else:
        done = candidates[-1]
    if len(candidates) > 1:
        notes.append(f"entry {entry.name}: catching up {len(candidates)} missed slots from {_iso(candidates[0])}")
    return done, [Due(entry, slot) for slot in candidates], notes


def next_due(entries: Sequence[Entry], state: BeatState, now: dt.datetime) -> tuple[dt.datetime, Entry] | None:
    """The earliest slot still to fire and its entry (None without entries)."""
    best: tuple[dt.datetime, Entry] | None = None
    for entry in entries:
        old = state.entries.get(entry.name)
        after = old.done_until if old is not None and old.fingerprint == entry.fingerprint else now
        slot = entry.cron.next_after(after)
        if best is None or slot < best[0]:
            best = (slot, entry)
    return best


def _iso(value: dt.datetime) -> str:
    return value.astimezone(UTC).isoformat()
