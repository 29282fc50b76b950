"""The pure plan: what fires at an injected `now`, catch-up by misfire_grace/coalesce/max_catch_up,
clock steps in both directions, cron changes that must not replay history, and simulated loops
through DST nights and a year boundary where every slot fires exactly once."""

from __future__ import annotations

import datetime as dt

from utilitarian import queues
from utilitarian.beat.cron import CronSchedule
from utilitarian.beat.schedule import Entry, next_due, plan
from utilitarian.beat.state import BeatState, EntryState

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def entry(name="e", cron="* * * * *", tz="UTC", **kw) -> Entry:
    return Entry(name=name, cron=CronSchedule(cron, tz), task="utilitarian.ping", queue=queues.DEFAULT,
                 timezone=tz, **kw)


def at(seconds: float, base: dt.datetime = T0) -> dt.datetime:
    return base + dt.timedelta(seconds=seconds)


def state_of(e: Entry, done_until: dt.datetime) -> BeatState:
    return BeatState({e.name: EntryState(done_until, e.fingerprint)})


def slots(p) -> list[dt.datetime]:
    return [d.slot for d in p.fires]


def test_new_entry_starts_from_now_and_writes_state():
    e = entry()
    p = plan([e], BeatState(), at(30))
    assert p.fires == () and p.changed
    assert p.state.entries["e"] == EntryState(at(30), e.fingerprint)


def test_on_time_slot_fires_once():
    e = entry(cron="* * * * * *")
    p = plan([e], state_of(e, T0), at(1.003))
    assert slots(p) == [at(1)] and p.state.entries["e"].done_until == at(1)
    again = plan([e], p.state, at(1.5))
    assert again.fires == () and not again.changed


def test_zero_grace_still_fires_a_slot_that_is_milliseconds_late():
    e = entry(cron="* * * * * *", misfire_grace=0.0)
    assert slots(plan([e], state_of(e, T0), at(1.2))) == [at(1)]
    late = plan([e], state_of(e, T0), at(3.5))  # slots 1..3 are all > 1 s late, except 3
    assert slots(late) == [at(3)]


def test_coalesce_fires_the_latest_missed_slot_once():
    e = entry(misfire_grace=3600.0, coalesce=True)
    p = plan([e], state_of(e, T0), at(605))
    assert slots(p) == [at(600)]
    assert any("missed slots from 2024-05-01T12:01:00+00:00 to 2024-05-01T12:10:00+00:00 coalesced" in n
               for n in p.notes)


def test_without_coalesce_every_missed_slot_fires_in_order():
    e = entry(misfire_grace=3600.0, coalesce=False)
    p = plan([e], state_of(e, T0), at(605))
    assert slots(p) == [at(60 * i) for i in range(1, 11)]


def test_slots_later_than_grace_are_skipped_and_never_reconsidered():
    e = entry(misfire_grace=300.0, coalesce=False)
    p = plan([e], state_of(e, T0), at(605))
    assert slots(p) == [at(60 * i) for i in range(6, 11)]  # 12:05:05 - 300 s < slot
    assert any("later than misfire_grace" in n for n in p.notes)
    assert p.state.entries["e"].done_until == at(600)


def test_all_missed_slots_too_late_advances_state_without_firing():
    e = entry(cron="0 * * * *", misfire_grace=60.0)
    p = plan([e], state_of(e, T0), at(3600 * 5 + 120))
    assert p.fires == () and p.changed
    assert p.state.entries["e"].done_until == at(3600 * 5)


def test_max_catch_up_bounds_a_burst_to_the_latest_slots():
    e = entry(cron="* * * * * *", misfire_grace=3600.0, coalesce=False)
    p = plan([e], state_of(e, T0), at(60), max_catch_up=10)
    assert slots(p) == [at(i) for i in range(51, 61)]
    assert any("max_catch_up" in n for n in p.notes)


def test_catch_up_fires_already_expired_are_not_sent():
    e = entry(misfire_grace=3600.0, coalesce=False, expires=150.0)
    p = plan([e], state_of(e, T0), at(605))
    assert slots(p) == [at(480), at(540), at(600)]  # 12:08 expires at 12:10:30 > now 12:10:05
    assert any("7 missed slot(s) already expired" in n for n in p.notes)
    hourly = entry(cron="0 * * * *", misfire_grace=3600.0, expires=60.0)
    gone = plan([hourly], state_of(hourly, T0), at(3600 + 90))
    assert gone.fires == () and gone.changed
    assert gone.state.entries["e"].done_until == at(3600)


def test_clock_stepping_back_fires_nothing_twice():
    e = entry(cron="* * * * * *", misfire_grace=60.0, coalesce=False)
    s = state_of(e, at(10))
    for back in (9.5, 5.0, 0.0, -3600.0):
        p = plan([e], s, at(back))
        assert p.fires == () and not p.changed
    resumed = plan([e], s, at(11.01))
    assert slots(resumed) == [at(11)]


def test_clock_stepping_forward_goes_through_the_catch_up_policy():
    coalesced = entry(name="c", cron="*/5 * * * *", misfire_grace=86400.0, coalesce=True)
    every = entry(name="a", cron="*/5 * * * *", misfire_grace=86400.0, coalesce=False)
    s = BeatState({"c": EntryState(T0, coalesced.fingerprint), "a": EntryState(T0, every.fingerprint)})
    p = plan([coalesced, every], s, at(3600 + 0.5))  # suspended for an hour
    assert [d.slot for d in p.fires if d.entry.name == "c"] == [at(3600)]
    assert [d.slot for d in p.fires if d.entry.name == "a"] == [at(300 * i) for i in range(1, 13)]
    assert [d.slot for d in p.fires] == sorted(d.slot for d in p.fires)


def test_changed_cron_does_not_replay_history():
    old = entry(cron="0 * * * *", misfire_grace=86400.0, coalesce=False)
    new = entry(cron="30 * * * *", misfire_grace=86400.0, coalesce=False)
    stale = state_of(old, T0 - dt.timedelta(days=1))
    p = plan([new], stale, at(10))
    assert p.fires == () and p.state.entries["e"] == EntryState(at(10), new.fingerprint)
    assert any("schedule changed" in n for n in p.notes)
    # a changed zone is a changed schedule too
    moved = entry(cron="0 * * * *", tz="Europe/Stockholm", misfire_grace=86400.0)
    assert plan([moved], stale, at(10)).fires == ()


def test_disabled_entries_are_dropped_and_unknown_ones_kept():
    e = entry()
    s = BeatState({"e": EntryState(T0, e.fingerprint), "paused": EntryState(T0, "x"),
                   "other-config": EntryState(T0, "y")}, foreign={"broken": {"done_until": 5}})
    p = plan([e], s, at(1), disabled={"paused"})
    assert set(p.state.entries) == {"e", "other-config"} and p.changed
    assert p.state.foreign == {"broken": {"done_until": 5}}


def test_next_due_is_the_earliest_slot_over_entries():
    a = entry(name="a", cron="0 * * * *")
    b = entry(name="b", cron="*/15 * * * *")
    s = BeatState({"a": EntryState(T0, a.fingerprint), "b": EntryState(T0, b.fingerprint)})
    slot, which = next_due([a, b], s, T0)
    assert (slot, which.name) == (at(900), "b")
    assert next_due([], s, T0) is None


def simulate(entries, start, end, step, *, jumps=None) -> list:
    """A loop with an injected wall clock: plan every `step` seconds; `jumps` maps a loop
    index to a clock step in seconds (negative = backwards)."""
    state, now, fired, i = BeatState(), start, [], 0
    while now <= end:
        p = plan(entries, state, now)
        fired.extend((d.entry.name, d.slot) for d in p.fires)
        state = p.state
        last = now
        now += dt.timedelta(seconds=step + (jumps or {}).get(i, 0))
        i += 1
    return fired, last


def test_simulated_autumn_night_fires_every_wall_slot_once_despite_a_clock_step_back():
    sthlm = [entry(name="hourly", cron="0 * * * *", tz="Europe/Stockholm"),
             entry(name="half", cron="*/30 * * * *", tz="Europe/Stockholm"),
             entry(name="daily", cron="30 2 * * *", tz="Europe/Stockholm")]
    start = dt.datetime(2024, 10, 26, 20, 0, 0, 500000, tzinfo=UTC)
    end = dt.datetime(2024, 10, 27, 6, 0, 0, tzinfo=UTC)
    fired, last = simulate(sthlm, start, end, 29.0, jumps={500: -900})  # NTP steps 15 min back at ~00:01 UTC
    assert len(fired) == len(set(fired))
    for e in sthlm:
        expected = e.cron.slots_between(start, last)
        assert [s for n, s in fired if n == e.name] == expected
    assert ("daily", dt.datetime(2024, 10, 27, 0, 30, tzinfo=UTC)) in fired


def test_simulated_spring_night_fires_the_swallowed_slots_after_the_gap():
    e = entry(name="daily", cron="30 2 * * *", tz="Europe/Stockholm")
    h = entry(name="half", cron="*/30 * * * *", tz="Europe/Stockholm")
    start = dt.datetime(2024, 3, 30, 20, 0, 0, 500000, tzinfo=UTC)
    fired, last = simulate([e, h], start, dt.datetime(2024, 3, 31, 4, tzinfo=UTC), 31.0)
    assert ("daily", dt.datetime(2024, 3, 31, 1, 0, tzinfo=UTC)) in fired  # 03:00 CEST
    halves = [s for n, s in fired if n == "half"]
    assert halves == h.cron.slots_between(start, last)
    assert len(halves) == len(set(halves))


def test_simulated_new_year_fires_the_yearly_slot_once():
    yearly = entry(name="y", cron="0 0 1 1 *", misfire_grace=7 * 86400.0)
    monthly = entry(name="m", cron="0 0 1 * *", misfire_grace=3 * 86400.0)
    start = dt.datetime(2024, 12, 31, 23, 50, tzinfo=UTC)
    fired, _ = simulate([yearly, monthly], start, dt.datetime(2025, 1, 1, 0, 20, tzinfo=UTC), 13.0)
    assert fired == [("m", dt.datetime(2025, 1, 1, tzinfo=UTC)), ("y", dt.datetime(2025, 1, 1, tzinfo=UTC))]
