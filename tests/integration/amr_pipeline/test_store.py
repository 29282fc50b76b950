"""The store on a real SQLite file and a real PostgreSQL database: migrations, idempotent commits,
staging and promotion, rejected series, rounds, runs, interface blocks across processes, retention."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading

import pytest

from utilitarian.amr.model import (AmrTask, AmrTaskGroup, AmrTaskRun, DispatchRound, Job, MeterDevice,
                                   MeterDeviceConfig, MeterEntry, MeterReading, NetworkInterface, job_id, round_id)
from utilitarian.amr.store import LATEST, SchemaOutdated, open_store
from utilitarian.amr.store.migrations import MIGRATIONS

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, tzinfo=UTC)


def device(name: str, series=("voltage", "energy"), can_block=False, port=5020) -> MeterDevice:
    return MeterDevice(name, f"modbus+tcp://127.0.0.1:{port}?device_id=1", "generic_modbus", "sdm120",
                       MeterDeviceConfig("sdm120/UTC", "UTC", tuple(series)),
                       NetworkInterface("127.0.0.1", port, can_block), "eastron_sdm120")


def add_meters(store, *names, **kwargs):
    task = AmrTask("read", "daily", "read_values", "generic_modbus")
    store.import_registry([MeterEntry(device(n, **kwargs), {"voltage": "V"}, groups=("g",)) for n in names],
                          tasks=[task], groups=[AmrTaskGroup("g", ("read",))])


def test_schema_is_checked_then_migrated_once(db_url):
    with open_store(db_url) as store:
        with pytest.raises(SchemaOutdated, match="run `utilitarian db migrate`"):
            store.check_schema()
        # every migration once, in order (numbers may skip while branches hold theirs)
        assert [m.version for m in store.migrate()] == [m.version for m in MIGRATIONS]
        assert store.migrate() == []
        assert store.check_schema() == LATEST


def test_a_job_is_looked_up_by_meter_name_or_uuid_with_its_task(store):
    add_meters(store, "m1")
    meter, task = store.lookup_job("m1", "read")
    assert (meter.name, meter.interface.port, task.name, task.task_call) == ("m1", 5020, "read", "read_values")
    assert store.lookup_job("m1", "gone")[0].name == "m1" and store.lookup_job("m1", "gone")[1] is None
    assert store.lookup_job(meter.uuid, "read")[0].name == "m1" and store.lookup_job(meter.uuid, "read")[1].name == "read"
    assert store.lookup_job("m1", None)[1] is None and store.lookup_job("nobody", "read")[0] is None


def test_a_polls_lookup_leaves_the_platform_record_out(store):
    # Given a meter imported with the platform's record of it (kilobytes of JSON no poll reads)
    import dataclasses

    record = '{"id": "m1", "notes": "%s"}' % ("x" * 2000)
    store.import_registry([MeterEntry(dataclasses.replace(device("m1"), platform_record=record), {}, groups=("g",))],
                          tasks=[AmrTask("read", "daily", "read_values", "generic_modbus")],
                          groups=[AmrTaskGroup("g", ("read",))])
    # Then the poll's lookup has everything but the record; the registry's own reads keep it
    meter, task = store.lookup_job("m1", "read")
    assert (meter.name, meter.url, task.name, meter.platform_record) == ("m1", device("m1").url, "read", None)
    assert store.get_meter("m1").platform_record == record


def test_group_results_commit_once_with_one_outbox_owner_per_job(store):
    # Given two jobs' readings, events and outcomes committed together (a poll process's group)
    add_meters(store, "m1", "m2")
    from utilitarian.amr.model import MeterSystemEvent

    r1 = [MeterReading("m1", "voltage", T0, "230.1", "V")]
    r2 = [MeterReading("m2", "voltage", T0, "229.0", "V"), MeterReading("m2", "energy", T0, "1.5", "kWh")]
    runs = [AmrTaskRun("j1", "m1", "read", "done", None), AmrTaskRun("j2", "m2", "read", "done", None)]
    events = [MeterSystemEvent("e1", "m2", "Clock drift", "3 s", T0)]
    store.commit_results([("j1", r1), ("j2", r2)], events, runs, now=T0, publish=True)
    # Then everything is stored, and each job owns the outbox rows of its own readings
    assert store.count_readings() == 3 and [e.title for e in store.list_events(meter="m2")] == ["Clock drift"]
    assert (store.get_run("j1").outcome, store.get_run("j2").outcome) == ("done", "done")
    owned = {e.owner: sorted(r["series"] for r in e.readings) for e in store.outbox_of_owners(["j1", "j2"])}
    assert owned == {"j1": ["voltage"], "j2": ["energy", "voltage"]}
    # and the same group again (a redelivery) writes nothing new: no second outbox row
    store.commit_results([("j1", r1), ("j2", r2)], events, runs, now=T0, publish=True)
    assert store.count_readings() == 3 and store.outbox_size() == 2 and len(store.list_events(meter="m2")) == 1


def test_commit_is_idempotent_and_a_changed_value_leaves_an_event(store):
    add_meters(store, "m1")
    batch = [MeterReading("m1", "voltage", T0, "230.1", "V"), MeterReading("m1", "energy", T0, "12.50", "kWh")]
    first = store.commit_readings(batch)
    again = store.commit_readings(batch)
    assert (first.inserted, again.inserted, again.unchanged, again.changed) == (2, 0, 2, 0)
    assert store.count_readings() == 2 and store.list_events() == []
    # 12.5 == 12.50: the same number is not a change
    assert store.commit_readings([MeterReading("m1", "energy", T0, "12.5")]).unchanged == 1
    changed = store.commit_readings([MeterReading("m1", "voltage", T0, "231.0", "V")])
    assert changed.changed == 1 and store.count_readings() == 2
    [(latest, _)] = store.tail_readings(meter="m1", limit=1)
    assert latest.value == "231.0"
    events = store.list_events(meter="m1")
    assert [e.title for e in events] == ["Reading value changed"]
    assert "230.1 replaced by 231.0" in events[0].content
    # the same change redelivered: no second event
    store.commit_readings([MeterReading("m1", "voltage", T0, "231.0", "V")])
    assert len(store.list_events(meter="m1")) == 1


def test_unknown_meter_is_staged_then_promoted_and_disallowed_series_rejected(store):
    add_meters(store, "m1")
    result = store.commit_readings([MeterReading("new", "voltage", T0, "1"),
                                    MeterReading("m1", "bogus", T0, "2"),
                                    MeterReading("m1", "voltage", T0, "3")])
    assert (result.inserted, result.staged, result.rejected) == (1, 1, 1)
    [event] = store.list_events(meter="m1")
    assert event.title == "Readings rejected" and "bogus" in event.content
    assert store.promote_staged().inserted == 0  # "new" is still unknown
    add_meters(store, "new")
    assert store.staged_meter_names() == ["new"]
    promoted = store.promote_staged(["new"])
    assert promoted.inserted == 1 and store.list_staged() == [] and store.count_readings("new") == 1


def test_concurrent_commits_of_the_same_keys_store_each_once(store):
    add_meters(store, *(f"m{i}" for i in range(5)))
    batch = [MeterReading(f"m{i}", s, T0 + dt.timedelta(minutes=k), "1", None)
             for i in range(5) for s in ("voltage", "energy") for k in range(10)]
    errors = []

    def commit():
        try:
            store.commit_readings(batch)
        except Exception as exc:  # collected: an assertion in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=commit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.count_readings() == len(batch)


def test_a_round_repeated_publishes_only_what_was_not_published(store):
    add_meters(store, "m1", "m2", "m3")
    pairs = store.jobs_for_schedule("daily")
    assert [p[:2] for p in pairs] == [("m1", "read"), ("m2", "read"), ("m3", "read")]
    jobs = [Job(job_id(m, t, T0), m, t, T0) for m, t, _ in pairs]
    rnd = DispatchRound(round_id("daily", T0), "daily", T0, 3, T0)
    assert len(store.record_round(rnd, jobs)) == 3
    store.mark_published([jobs[0].id])
    assert [j.meter for j in store.record_round(rnd, jobs)] == ["m2", "m3"]
    store.mark_published([j.id for j in jobs])
    assert store.record_round(rnd, jobs) == [] and store.get_round(rnd.id).jobs == 3
    # outcomes: a late "failed" never overwrites "done"
    store.record_runs([AmrTaskRun(jobs[0].id, "m1", "read", "done", rnd.id, duration=0.1, attempts=1)])
    store.record_runs([AmrTaskRun(jobs[0].id, "m1", "read", "failed", rnd.id, error="x", attempts=2)])
    store.record_runs([AmrTaskRun(jobs[1].id, "m2", "read", "failed", rnd.id, error="timeout", attempts=4)])
    [counts] = store.round_counts()
    assert (counts.round.jobs, counts.done, counts.failed) == (3, 1, 1)
    assert store.get_run(jobs[0].id).outcome == "done"


def _hold_and_count(url: str, interface_id: int, counter: str, rounds: int, name: str) -> None:
    import os
    import time

    from utilitarian.amr.blocking import interface_lock

    with open_store(url, pool_size=2) as store:
        for i in range(rounds):
            while True:
                try:
                    with interface_lock(store, interface_id, "gw", f"{name}-{i}", lease=30, wait=5):
                        # read-modify-write with a pause: two holders at once would lose an update
                        with open(counter) as fh:
                            value = int(fh.read() or 0)
                        time.sleep(0.002)
                        with open(counter, "w") as fh:
                            fh.write(str(value + 1))
                    break
                except Exception as exc:  # InterfaceBusy after 5 s: try again
                    if type(exc).__name__ != "InterfaceBusy":
                        raise
    os._exit(0)


def test_interface_block_is_exclusive_across_processes(store, db_url, tmp_path):
    add_meters(store, "m1", can_block=True)
    iface = store.get_meter("m1").interface
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold_and_count, args=(db_url, iface.id, str(counter), 25, f"p{n}"))
             for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert int(counter.read_text()) == 100
    assert store.block_holder(iface.id) is None


def test_a_dead_holders_block_expires_and_is_released(store):
    add_meters(store, "m1", can_block=True)
    iface = store.get_meter("m1").interface
    assert store.acquire_block(iface.id, "otherhost:1:job", lease=10, now=1000.0)
    assert not store.acquire_block(iface.id, "me", lease=10, now=1005.0)
    assert store.release_stale_blocks(now=1005.0) == 0
    assert store.release_stale_blocks(now=1011.0) == 1
    assert store.acquire_block(iface.id, "me", lease=10, now=1011.0)


def test_retention_deletes_in_bounded_batches(store):
    add_meters(store, "m1")
    old = [MeterReading("m1", "voltage", T0 - dt.timedelta(days=400, minutes=k), "1") for k in range(250)]
    new = [MeterReading("m1", "voltage", T0 - dt.timedelta(minutes=k), "1") for k in range(10)]
    store.commit_readings(old + new)
    cutoff = T0 - dt.timedelta(days=365)
    deleted = [store.delete_older("meter_reading", cutoff, batch=100) for _ in range(4)]
    assert deleted == [100, 100, 50, 0]
    assert store.count_readings() == 10
