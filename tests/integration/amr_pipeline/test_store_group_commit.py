"""A group's readings are checked against the stored ones in one statement when their keys form a
cross product (a round: every meter, the same series, the slot), one meter at a time otherwise.
On SQLite and PostgreSQL both ways must decide exactly what committing each meter alone decides:
inserted, unchanged, changed (with its event), staged, rejected, and the rows left behind."""

from __future__ import annotations

import datetime as dt

from utilitarian.amr.model import (AmrTask, AmrTaskGroup, MeterDevice, MeterDeviceConfig, MeterEntry,
                                   MeterReading, NetworkInterface)
from utilitarian.amr.store.readings import MAX_PARAMS

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, tzinfo=UTC)
SERIES = ("voltage", "energy")


def add_meters(store, names):
    task = AmrTask("read", "daily", "read_values", "generic_modbus")
    store.import_registry(
        [MeterEntry(MeterDevice(n, f"modbus+tcp://127.0.0.1:5020?device_id={i % 200 + 1}", "generic_modbus",
                                "sdm120", MeterDeviceConfig("sdm120/UTC", "UTC", SERIES),
                                NetworkInterface("127.0.0.1", 5020), "eastron_sdm120"), {}, groups=("g",))
         for i, n in enumerate(names)], tasks=[task], groups=[AmrTaskGroup("g", ("read",))])


def readings_of(prefix: str, n: int, value: str, stamps: int = 1) -> list[MeterReading]:
    return [MeterReading(f"{prefix}{i:04d}", s, T0 + dt.timedelta(minutes=15 * k), f"{value}{i}", "V")
            for i in range(n) for k in range(stamps) for s in SERIES]


def summary(result, prefix: str):
    strip = (lambda name: name[len(prefix):])
    return (result.inserted, result.changed, result.unchanged, result.staged, result.rejected,
            sorted((strip(r.meter), r.series, r.timestamp, r.value) for r in result.written),
            sorted((strip(e.meter), e.title, e.content) for e in result.events))


def stored(store, prefix: str):
    return sorted((r.meter[len(prefix):], r.series, r.timestamp, r.value) for r in store.iter_readings()
                  if r.meter.startswith(prefix))


def commit_both_ways(store, batch_of):
    """Commit batch_of("a") as one group and batch_of("b") meter by meter; the same outcome."""
    together = store.commit_readings(batch_of("a"), now=T0)
    alone = {}
    for r in batch_of("b"):
        alone.setdefault(r.meter, []).append(r)
    results = [store.commit_readings(rs, now=T0) for rs in alone.values()]
    totals = tuple(sum(getattr(r, f) for r in results) for f in ("inserted", "changed", "unchanged", "staged",
                                                                 "rejected"))
    written = sorted((r.meter[1:], r.series, r.timestamp, r.value) for res in results for r in res.written)
    events = sorted((e.meter[1:], e.title, e.content) for res in results for e in res.events)
    assert summary(together, "a") == (*totals, written, events)
    assert stored(store, "a") == stored(store, "b")
    return together


def test_a_round_shaped_group_decides_like_meters_alone(store):
    # Given more meters than one statement may name, every other one read before
    n = MAX_PARAMS + 150
    add_meters(store, [f"{p}{i:04d}" for p in "ab" for i in range(n)])
    first = commit_both_ways(store, lambda p: readings_of(p, n, "1.")[::4] + readings_of(p, n, "1.")[1::4])
    assert first.inserted == n * len(SERIES) // 2
    # When the round commits every meter: the old half again (some values changed), the rest new,
    # plus readings for a meter the registry does not know and a series the config does not allow
    def round_of(p):
        batch = readings_of(p, n, "1.")
        batch[::7] = [MeterReading(r.meter, r.series, r.timestamp, "9" + r.value, r.unit) for r in batch[::7]]
        return batch + [MeterReading(f"{p}unknown", "voltage", T0, "1"),
                        MeterReading(f"{p}0001", "frequency", T0, "50")]
    again = commit_both_ways(store, round_of)
    # Then the outcome is what meters alone gave (asserted above), and it is all of these kinds
    assert again.inserted and again.changed and again.unchanged and again.staged and again.rejected


def test_a_mixed_group_decides_like_meters_alone(store):
    # Given a load profile (one meter, many timestamps) beside single readings of other meters:
    # their keys are far from a cross product, so each meter is asked alone
    add_meters(store, [f"{p}{i:04d}" for p in "ab" for i in range(30)])

    def mixed(p, value):
        return readings_of(p, 1, value, stamps=500) + readings_of(p, 30, value)[2:]

    commit_both_ways(store, lambda p: mixed(p, "2."))
    again = commit_both_ways(store, lambda p: mixed(p, "2.") [:-4] + mixed(p, "3.")[-4:])
    assert again.unchanged and again.changed == 4
