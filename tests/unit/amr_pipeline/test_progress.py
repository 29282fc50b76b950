"""Round progress lines from counts (pure): done / failed / pending, rate over the recent window, ETA."""

from __future__ import annotations

import datetime as dt

from utilitarian.amr.model import DispatchRound
from utilitarian.amr.progress import format_progress, round_progress
from utilitarian.amr.store.runs import RoundCounts

UTC = dt.timezone.utc
SLOT = dt.datetime(2026, 11, 24, tzinfo=UTC)


class Counts:
    """Stands in for the store's GROUP BY (covered against real databases in integration)."""

    def __init__(self, *rows):
        self.rows = rows

    def round_counts(self, *, limit, now, window):
        return list(self.rows)[:limit]


def at(seconds: float) -> dt.datetime:
    return SLOT + dt.timedelta(seconds=seconds)


def test_running_round_shows_rate_and_eta():
    rnd = DispatchRound("daily@x", "daily", SLOT, 10_000, at(0), 1.2)
    # 7,312 finished; 824 of them in the last 120 s -> 412/min; 2,688 left -> about 6.5 min
    store = Counts(RoundCounts(rnd, 7_300, 12, at(5), at(1000), recent=824))
    [p] = round_progress(store, now=at(1000))
    assert (p.done, p.failed, p.pending) == (7_300, 12, 2_688)
    assert round(p.rate_per_min) == 412
    assert format_progress([p]) == [
        "daily 2026-11-24T00:00Z: 7,312 of 10,000, 412/min, about 7 min left (12 failed)"]


def test_young_round_rates_over_its_age_and_finished_round_says_how_long():
    young = DispatchRound("hourly@x", "hourly", SLOT, 600, at(0))
    done = DispatchRound("quarterly@x", "quarterly", SLOT, 200, at(0))
    store = Counts(RoundCounts(young, 60, 0, at(1), at(30), recent=60),
                   RoundCounts(done, 200, 0, at(1), at(80), recent=0))
    young_p, done_p = round_progress(store, now=at(30))
    assert round(young_p.rate_per_min) == 120 and round(young_p.eta_seconds) == 270
    assert format_progress([young_p, done_p]) == [
        "hourly 2026-11-24T00:00Z: 60 of 600, 120/min, about 4 min left",
        "quarterly 2026-11-24T00:00Z: 200 of 200, finished in 80 s"]


def test_round_not_started_yet():
    rnd = DispatchRound("daily@x", "daily", SLOT, 5, at(0))
    [p] = round_progress(Counts(RoundCounts(rnd, 0, 0, None, None)), now=at(3))
    assert p.pending == 5 and p.eta_seconds is None
    assert format_progress([p]) == ["daily 2026-11-24T00:00Z: 0 of 5, starting"]


def test_status_lines_come_from_the_store_and_a_missing_store_is_not_created(tmp_path):
    from utilitarian.amr.model import Job
    from utilitarian.amr.progress import progress_for_status
    from utilitarian.amr.store import open_store
    from utilitarian.config import parse_config

    db = tmp_path / "amr.sqlite3"
    config = parse_config({"database": {"url": f"sqlite:///{db}"}, "beat": {"builtin_schedules": False}})
    assert progress_for_status(config) == [] and not db.exists()
    with open_store(f"sqlite:///{db}") as store:
        store.migrate()
        rnd = DispatchRound("hourly@x", "hourly", SLOT, 0, at(0))
        store.record_round(rnd, [Job("j1", "m1", "t", SLOT), Job("j2", "m2", "t", SLOT)], now=at(0))
    assert progress_for_status(config, now=at(5)) == ["hourly 2026-11-24T00:00Z: 0 of 2, starting"]
