"""Issue 11, the AMR data path: no reading lost or silently dropped whatever fails in between. Each
test reproduces one loss found on b443e7d (and fails there) with the real broker on the per-test vhost,
a real SQLite file or PostgreSQL database, and real worker processes where the loss needs them:

- a continuation whose publish failed is sent by the retry (it was claimed first, then never sent);
- staged readings of any number of meters are promoted (only 1,000 were), and retention keeps
  staged readings whose meter exists by now (it deleted them after 30 days);
- committed and promoted readings reach the publish queues although the first publish failed
  (the retry found nothing left to publish);
- a worker started with --exit-when-idle stays until the round's later jobs ran (it left them a month);
- an interface block is renewed while its session runs, and judged by the database's clock.
The crash-and-fail harness (tests/integration/amr_faults) covers every step boundary at once.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import pytest

from support.amr_harness import wait_for
from utilitarian import queues
from utilitarian.amr.model import AmrTask, MeterDevice, MeterDeviceConfig, MeterEntry, MeterReading, iso_utc
from utilitarian.amr.progress import round_progress
from utilitarian.amr.tasks import dispatch_schedule
from utilitarian.errors import PublishError
from utilitarian.protocol import TaskMessage
from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

UTC = dt.timezone.utc
SLOT = "2026-11-24T00:00:00Z"
PUBLISH = '[amr.publish]\nexchange = "platform.readings"\nwebhook_url = "http://127.0.0.1:9/hook"\n'


def modbus_rows(count: int, *, prefix: str = "m", can_block: bool = False) -> list[dict]:
    return [{"name": f"{prefix}{i:04d}", "execution_type": "generic_modbus", "meter_type": "eastron_sdm120",
             "url": f"modbus+tcp://127.0.0.1:1502?device_id={i % 200 + 1}", "series": ["voltage"],
             "can_block": can_block} for i in range(count)]


def fail_first_send(monkeypatch, app, task_name: str) -> list:
    """The App's next publish that carries `task_name` fails (as an unconfirmed publish would)."""
    real = app.send_tasks
    failed: list = []

    def send_tasks(calls, **kwargs):
        calls = list(calls)
        if not failed and any(c.name == task_name for c in calls):
            failed.append([c.name for c in calls])
            raise PublishError(f"{len(calls)} of {len(calls)} messages not confirmed (test)")
        return real(calls, **kwargs)

    monkeypatch.setattr(app, "send_tasks", send_tasks)
    return failed


def delayed_messages(amr) -> int:
    from utilitarian.broker import delay
    from utilitarian.broker.topology import inspect_queues

    return sum(q.messages for q in inspect_queues(amr.settings, [delay.level_queue(n) for n in range(delay.LEVELS)]))


# --- 1. the round's delayed continuation ---------------------------------------------------------
def test_a_continuation_whose_publish_failed_is_sent_by_the_retry(amr, monkeypatch):
    now_task = AmrTask("read-monthly", "monthly", "read_values", "generic_modbus")
    gas_day = AmrTask("gas-day", "monthly", "read_values", "generic_modbus", run_offset_seconds=6 * 3600.0)
    amr.import_meters(modbus_rows(3), tasks=[now_task, gas_day], group="all")
    slot = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    text = iso_utc(slot)
    # Given the publish of the round's continuation fails once
    failed = fail_first_send(monkeypatch, amr.app, "amr.dispatch_schedule")
    first = amr.ctx("amr.dispatch_schedule")
    with pytest.raises(PublishError):
        dispatch_schedule(first, "monthly", text)
    assert failed == [["amr.dispatch_schedule"]]
    # When the worker retries the dispatch (same message id, one retry more)
    again = dispatch_schedule(amr.ctx("amr.dispatch_schedule", task_id=first.id, retries=1), "monthly", text)
    assert (again["published"], again["waiting"]) == (0, 3)
    # Then the continuation waits in the delay levels, exactly once (a third dispatch adds none)
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "monthly", text)
    assert delayed_messages(amr) == 1
    # and when it runs at 06:00 it publishes the three gas-day jobs
    monkeypatch.setattr("utilitarian.amr.tasks.dispatch.utc_now", lambda: slot + dt.timedelta(hours=6, seconds=1))
    assert dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "monthly", text)["published"] == 3
    assert {m.kwargs["amr_task"] for m in amr.drain(queues.AMR_MONTHLY, expect=6, timeout=15)} == {
        "read-monthly", "gas-day"}


def test_jobs_dropped_from_the_schedule_before_their_offset_end_as_failed_runs(amr, monkeypatch):
    gas_day = AmrTask("gas-day", "monthly", "read_values", "generic_modbus", run_offset_seconds=3600.0)
    amr.import_meters(modbus_rows(2), tasks=[gas_day], group="all")
    slot = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "monthly", iso_utc(slot))
    # When the task is deactivated before the continuation comes
    amr.store.add_amr_task(AmrTask("gas-day", "monthly", "read_values", "generic_modbus",
                                   run_offset_seconds=3600.0, is_active=False))
    monkeypatch.setattr("utilitarian.amr.tasks.dispatch.utc_now", lambda: slot + dt.timedelta(seconds=3601))
    assert dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "monthly", iso_utc(slot))["published"] == 0
    # Then its jobs do not stay pending: the round finishes, the runs say why
    [p] = round_progress(amr.store)
    assert (p.jobs, p.pending, p.failed) == (2, 0, 2)
    assert all("no longer scheduled" in r.error for r in amr.store.list_runs(p.round_id))


# --- 2. promotion of staged readings --------------------------------------------------------------
def import_devices(store, names) -> None:
    config = MeterDeviceConfig("sdm120/UTC", "UTC", ())
    store.import_registry([MeterEntry(MeterDevice(n, "modbus+tcp://127.0.0.1:1502?device_id=1", "generic_modbus",
                                                  "sdm120", config, None, "eastron_sdm120"), {})
                           for n in names])


def test_staged_readings_of_1500_new_meters_are_all_promoted(amr):
    names = [f"late-{i:04d}" for i in range(1500)]
    t = dt.datetime(2026, 11, 1, tzinfo=UTC)
    staged = amr.store.commit_readings([MeterReading(n, "voltage", t, "230", "V") for n in names])
    assert staged.staged == 1500
    import_devices(amr.store, names)
    # When `meters import` sends the promotion for the 1,500 meters it added
    result = amr.run(TaskMessage(id="promote-1", task="default.promote_staged_meter_readings", args=(),
                                 kwargs={"meters": names}))
    # Then every one of them is promoted, not the first 1,000
    assert result["promoted"] == 1500
    assert amr.store.count_readings() == 1500 and amr.store.list_staged() == []


def test_retention_keeps_staged_readings_of_meters_that_exist_and_promotes_them(amr):
    old = dt.datetime.now(UTC) - dt.timedelta(days=40)
    amr.store.commit_readings([MeterReading("late-1", "voltage", old, "230", "V"),
                               MeterReading("nobody", "voltage", old, "1", "V")], now=old)
    import_devices(amr.store, ["late-1"])  # imported with --no-promote, or the promotion was lost
    amr.run(TaskMessage(id="ret-1", task="cleanup.apply_retention", args=(), kwargs={}))
    # Then only the reading of a meter still unknown is deleted; the other waits for its promotion
    assert [(s.meter, s.series) for s in amr.store.list_staged()] == [("late-1", "voltage")]
    [promote] = amr.drain(queues.DEFAULT, expect=1)
    assert promote.task == "default.promote_staged_meter_readings"
    amr.run(promote)
    assert amr.store.count_readings("late-1") == 1 and amr.store.list_staged() == []


# --- 3. publishing committed and promoted readings at least once -------------------------------------
def published(amr) -> tuple[list, list]:
    exchange = [r for m in amr.drain(queues.EXTERNAL_PUBLISH) for r in m.kwargs["readings"]]
    webhook = [r for m in amr.drain(queues.EXTERNAL) for r in m.kwargs["readings"]]
    return exchange, webhook


def test_committed_readings_are_published_by_the_retry_after_a_failed_publish(amr, monkeypatch):
    amr.configure(PUBLISH)
    import_devices(amr.store, ["m1"])
    wire = [{"meter": "m1", "series": "voltage", "timestamp": SLOT, "value": "230", "unit": "V"},
            {"meter": "m1", "series": "current", "timestamp": SLOT, "value": "5", "unit": "A"}]
    message = TaskMessage(id="commit-1", task="commits.save_meter_readings", args=(), kwargs={"readings": wire})
    fail_first_send(monkeypatch, amr.app, "external.publish_meter_readings")
    # Given the commit stored the readings and then its publish failed
    with pytest.raises(PublishError):
        amr.run(message)
    assert amr.store.count_readings("m1") == 2 and published(amr) == ([], [])
    # When the worker retries the same message
    retry = TaskMessage(id="commit-1", task="commits.save_meter_readings", args=(), kwargs={"readings": wire},
                        retries=1)
    assert amr.run(retry)["published"] == 2
    # Then both readings are on their way to the exchange and to the webhook
    exchange, webhook = published(amr)
    assert sorted(r["series"] for r in exchange) == sorted(r["series"] for r in webhook) == ["current", "voltage"]
    assert amr.store.outbox_size() == 0


def test_promoted_readings_are_published_by_the_retry_after_a_failed_publish(amr, monkeypatch):
    amr.configure(PUBLISH)
    t = dt.datetime(2026, 11, 1, tzinfo=UTC)
    amr.store.commit_readings([MeterReading("late-1", "voltage", t + dt.timedelta(minutes=k), "230", "V")
                               for k in range(3)])
    import_devices(amr.store, ["late-1"])
    message = TaskMessage(id="promote-2", task="default.promote_staged_meter_readings", args=(),
                          kwargs={"meters": ["late-1"]})
    fail_first_send(monkeypatch, amr.app, "external.post_meter_readings")
    with pytest.raises(PublishError):
        amr.run(message)
    # the staged rows are gone with the promotion's transaction; the retry must still publish them
    assert amr.store.list_staged() == [] and amr.store.count_readings("late-1") == 3
    amr.run(TaskMessage(id="promote-2", task="default.promote_staged_meter_readings", args=(),
                        kwargs={"meters": ["late-1"]}, retries=1))
    exchange, webhook = published(amr)
    assert len(exchange) == len(webhook) == 3 and amr.store.outbox_size() == 0


def test_outbox_rows_of_a_commit_that_gave_up_are_published_by_the_sweeper(amr, monkeypatch):
    amr.configure(PUBLISH)
    import_devices(amr.store, ["m1"])
    wire = [{"meter": "m1", "series": "voltage", "timestamp": SLOT, "value": "230", "unit": "V"}]
    fail_first_send(monkeypatch, amr.app, "external.publish_meter_readings")
    with pytest.raises(PublishError):  # and the message is dead-lettered: no retry comes
        amr.run(TaskMessage(id="commit-2", task="commits.save_meter_readings", args=(), kwargs={"readings": wire}))
    assert amr.store.outbox_size() == 1
    sweep = TaskMessage(id="sweep", task="cleanup.publish_outbox", args=(), kwargs={})
    assert amr.run(sweep) == {"published": 0}  # within the grace the owner may still publish itself
    later = dt.datetime.now(UTC) + dt.timedelta(minutes=6)
    monkeypatch.setattr("utilitarian.amr.tasks.cleanup.utc_now", lambda: later)
    assert amr.run(sweep) == {"published": 1}
    assert published(amr) == (wire, wire) and amr.store.outbox_size() == 0


# --- 5. --exit-when-idle and jobs that come later ----------------------------------------------------
def test_a_worker_exiting_when_idle_stays_until_the_rounds_later_jobs_ran(amr):
    offset = 8.0
    meters = [SimModbusMeter(device_id=i + 1, meter_type="eastron_sdm120") for i in range(3)]
    with ModbusFleetSimulator(meters) as sim:
        rows = sim.meter_entries()
        tasks = [AmrTask("read-monthly", "monthly", "read_values", "generic_modbus", {"series": ["voltage"]}),
                 AmrTask("gas-day", "monthly", "read_values", "generic_modbus", {"series": ["voltage"]},
                         run_offset_seconds=offset)]
        amr.import_meters(rows, tasks=tasks, group="all")
        # Given an always-on worker (dispatch, commits) and a round of 3 jobs now and 3 at +8 s
        base = amr.worker("-Q", "amr,commits,commits.meter_readings,commits.meter_system_events",
                          "-c", "1", "--threads", "4")
        slot = dt.datetime.now(UTC).replace(microsecond=0)
        amr.app.send_task("amr.dispatch_schedule", kwargs={"schedule": "monthly", "slot": iso_utc(slot)})
        wait_for(lambda: round_progress(amr.store), timeout=30, what="the round to be dispatched")
        # When the timer starts the monthly worker, which exits after 1 s without work
        monthly = amr.worker("-Q", "amr.scheduled.monthly", "-n", "monthly@test", "-c", "1", "--threads", "4",
                             "--exit-when-idle", "1")
        assert monthly.wait(offset + 90) == 0, monthly.output()[-3000:]
        # Then by the time it exited every job of the round had run, the later ones too
        wait_for(lambda: round_progress(amr.store)[0].done == 6, timeout=30,
                 what="all six runs recorded (they are committed by the other worker)")
        assert dt.datetime.now(UTC) >= slot + dt.timedelta(seconds=offset)
        base.signal(15)
        assert base.wait(60) == 0


# --- 9b. interface-block leases ------------------------------------------------------------------
def test_a_session_longer_than_its_lease_keeps_the_interface(store):
    from utilitarian.amr.blocking import InterfaceBusy, interface_lock

    import_blockable(store)
    iface = store.get_meter("bus-1").interface
    with interface_lock(store, iface.id, "bus", "archive-read", lease=1.0, wait=0):
        # an LIS-200 archive read that takes three leases' time
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            with pytest.raises(InterfaceBusy):
                with interface_lock(store, iface.id, "bus", "intruder", lease=1.0, wait=0):
                    pass
            time.sleep(0.2)
    with interface_lock(store, iface.id, "bus", "next", lease=1.0, wait=0):
        pass
    assert store.block_holder(iface.id) is None


def test_two_deliveries_of_one_job_in_one_process_do_not_share_a_block(store):
    """A dispatch redelivered after its publish published the same job twice; both copies may land
    in one worker child. Holding the block must still mean one session on the bus."""
    from utilitarian.amr.blocking import InterfaceBusy, interface_lock

    import_blockable(store)
    iface = store.get_meter("bus-1").interface
    with interface_lock(store, iface.id, "bus", "job-1", lease=30.0, wait=0):
        with pytest.raises(InterfaceBusy):
            with interface_lock(store, iface.id, "bus", "job-1", lease=30.0, wait=0):
                pass


def import_blockable(store) -> None:
    from utilitarian.amr.model import NetworkInterface

    config = MeterDeviceConfig("sdm120/UTC", "UTC", ())
    store.import_registry([MeterEntry(MeterDevice("bus-1", "modbus+tcp://127.0.0.1:1502?device_id=1",
                                                  "generic_modbus", "sdm120", config,
                                                  NetworkInterface("127.0.0.1", 1502, True), "eastron_sdm120"), {})])


SKEWED_HOST = """
import sys, time
_real = time.time
time.time = lambda: _real() + 3600.0  # this host's clock runs an hour ahead
from utilitarian.amr.blocking import InterfaceBusy, interface_lock
from utilitarian.amr.store import open_store
with open_store(sys.argv[1]) as store:
    try:
        with interface_lock(store, int(sys.argv[2]), "bus", "skewed-job", lease=300.0, wait=0):
            print("TOOK")
    except InterfaceBusy:
        print("BUSY")
"""


def test_a_host_whose_clock_runs_ahead_cannot_take_a_live_block(store, db_url):
    from utilitarian.amr.blocking import interface_lock

    import_blockable(store)
    iface = store.get_meter("bus-1").interface
    with interface_lock(store, iface.id, "bus", "live-job", lease=300.0, wait=0):
        out = subprocess.run([sys.executable, "-c", SKEWED_HOST, db_url, str(iface.id)], capture_output=True,
                             text=True, timeout=60)
    assert out.stdout.strip() == "BUSY", out.stderr[-2000:]


# --- status --json ------------------------------------------------------------------------------------
def test_status_json_gives_round_progress_as_numbers(amr):
    from utilitarian.amr.model import AmrTaskRun, DispatchRound, Job

    slot = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=60)
    rnd = DispatchRound("daily@x", "daily", slot, 0, slot)
    jobs = [Job(f"j{i}", f"m{i}", "t", slot) for i in range(4)]
    amr.store.record_round(rnd, jobs, now=slot)
    amr.store.record_runs([AmrTaskRun("j0", "m0", "t", "done", rnd.id, duration=1.0, attempts=1,
                                      finished_at=slot + dt.timedelta(seconds=30)),
                           AmrTaskRun("j1", "m1", "t", "failed", rnd.id, error="x", attempts=3,
                                      finished_at=slot + dt.timedelta(seconds=40))])
    code, out = amr.cli("status", "--json", "--no-queues")
    doc = json.loads(out[out.index("{"):])
    [numbers] = doc["progress_numbers"]
    assert {k: numbers[k] for k in ("total", "done", "failed", "pending", "state")} == {
        "total": 4, "done": 1, "failed": 1, "pending": 2, "state": "running"}
    assert numbers["started"] == iso_utc(slot) and numbers["eta_seconds"] > 0
    assert dt.datetime.fromisoformat(numbers["eta"].replace("Z", "+00:00")) > dt.datetime.now(UTC)


def test_rounds_with_work_ahead_are_those_whose_jobs_can_still_come(store):
    from utilitarian.amr.model import AmrTaskRun, DispatchRound, Job

    now = dt.datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    slot = now - dt.timedelta(minutes=30)

    def round_of(schedule, dispatched, jobs=2):
        rnd = DispatchRound(f"{schedule}@{iso_utc(dispatched)}", schedule, dispatched, 0, dispatched)
        store.record_round(rnd, [Job(f"{rnd.id}-{i}", f"m{i}", "t", dispatched) for i in range(jobs)], now=dispatched)
        return rnd

    waiting = round_of("monthly", slot)
    store.record_continuation(waiting.id, slot + dt.timedelta(hours=6))  # a 06:00 gas-day read
    done = round_of("daily", slot, jobs=1)
    store.record_runs([AmrTaskRun(f"{done.id}-0", "m0", "t", "done", done.id, attempts=1, finished_at=now)])
    silent = round_of("yearly", now - dt.timedelta(hours=3))  # pending, nothing happened for 3 h
    assert store.rounds_with_work_ahead(["monthly", "daily", "yearly"], now=now, grace=3600.0) == [waiting.id]
    assert store.rounds_with_work_ahead(["daily"], now=now, grace=3600.0) == []
    # a round whose last job finished a moment ago is still on its way (retries, defers)
    store.record_runs([AmrTaskRun(f"{silent.id}-0", "m0", "t", "done", silent.id, attempts=1,
                                  finished_at=now - dt.timedelta(minutes=1))])
    assert store.rounds_with_work_ahead(["yearly"], now=now, grace=3600.0) == [silent.id]
