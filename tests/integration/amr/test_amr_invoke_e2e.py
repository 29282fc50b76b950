"""Done-when of issue 12: the platform's documented invoke bodies for generic_lis200 and
generic_corus, verbatim, sent by a real Celery 5 producer (`send_task`, as the platform's API does)
to amr.on_demand, run by a real worker process against the simulators, end in committed readings
under the meter's name; a scheduled AmrTask with the documented kwargs goes dispatch -> readings.
Interval data read again over an overlapping range changes nothing; a changed value is an event.

Limits: the docs' `address` '2.301' is sent as written (the simulated EK260 knows that address; a
real one may answer #0001); the docs' Corus set_time example names generic_lis200, which cannot
drive a Corus: it ends as a "Poll failed" event saying so, which is what a worker should do."""

from __future__ import annotations

import ast
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from support.amr_harness import AmrKit, wait_for
from utilitarian import queues
from utilitarian.amr.model import ID_NAMESPACE, AmrTask
from utilitarian_sim import IecSimulator, SimIecMeter
from utilitarian_sim import CorusSimulator, SimCorusMeter

UTC = timezone.utc
UUID = "890b61bb-6594-48db-ad90-584d56754455"      # the docs' meter_device
LIS_BODIES = ["""{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_single_value",
    "task_kwargs": {
        "address": '2.301',
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_lis200"
}""", """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_archive_by_date",
    "task_kwargs": {
        "start_date": "2020-01-15T06:00:00+0100",
        "end_date": "2020-01-16T06:00:00+0100",
        "archive_number": 3,
        "control_position": 3
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_lis200"
}""", """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_archive_by_offset_seconds",
    "task_kwargs": {
        "offset_seconds": 1000,
        "archive_number": 3,
        "control_position": 3
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_lis200"
}"""]
LIS_SET_TIME = """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "set_time",
    "task_kwargs": {},
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_lis200"
}"""
CORUS_BODIES = ["""{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_parameters",
    "task_kwargs": {
        "parameters": ["index_converted", "index_unconverted"],
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_corus"
}""", """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_database",
    "task_kwargs": {
        "end_date": "2020-01-15T06:00:00+0100",
        "start_date": "2020-01-16T06:00:00+0100",
        "database": 'interval',
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_corus"
}""", """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_database_by_offset_seconds",
    "task_kwargs": {
        "offset_seconds": 1000,
        "database": 'hourly',
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_corus"
}""", """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "set_time",
    "task_kwargs": {
      "allowed_drift_seconds": 60
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_lis200"
}"""]
FAST = """
[tasks."amr.execute_meter_task"]
max_retries = 1
retry_backoff = 0.5
retry_jitter = false
"""


@pytest.fixture
def kit(tmp_path, broker_url, broker_settings):
    k = AmrKit(tmp_path, broker_url, broker_settings)
    k.configure(FAST)
    yield k
    k.close()


@pytest.fixture
def celery_app(broker_url):
    from celery import Celery

    app = Celery("platform-api", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


def invoke(celery_app, body_text: str) -> str:
    """What the platform's POST /metering/amr-tasks/invoke does with the body."""
    body = ast.literal_eval(body_text)
    return celery_app.send_task("amr.execute_meter_task", kwargs=body, queue=queues.AMR_ON_DEMAND).id


def finished(store, ids):
    runs = [store.get_run(i) for i in ids]
    return all(r is not None and r.outcome != "pending" for r in runs) and runs


def at(moment: datetime) -> float:
    return moment.timestamp() - time.time()


def test_lis200_docs_bodies_from_a_celery_producer_end_in_readings(kit, celery_app):
    # The EK260 lives on 2020-01-16 12:00 CET, so the docs' date range has archive rows.
    meter = SimIecMeter("12345678", dialect="lis200", manufacturer="Els", ident="EK260", password="4711",
                        timezone="Europe/Stockholm", values={"2.301": "0012345.678*m3"},
                        clock_offset=at(datetime(2020, 1, 16, 11, 0, tzinfo=UTC)))
    with IecSimulator([meter]) as sim:
        row = sim.meter_entries(timezone="Europe/Stockholm")[0]
        row.update(name="ek-1", uuid=UUID, url=row["url"] + "&timeout=2", series=row["series"] + ["2.301"])
        kit.import_meters([row], tasks=[AmrTask("lis-hourly", "hourly", "read_archive_by_offset_seconds",
                                                "generic_lis200", {"offset_seconds": 7200, "archive_number": 3,
                                                                   "control_position": 3})])
        kit.store.attach_task("lis-hourly", meters=["ek-1"])
        worker = kit.worker("-c", "1", "--threads", "4")
        ids = [invoke(celery_app, body) for body in LIS_BODIES]
        runs = wait_for(lambda: finished(kit.store, ids), timeout=90, what="the invoked jobs")
        assert [r.outcome for r in runs] == ["done"] * 3, [r.error for r in runs]
        # Runs, readings and events travel in separate commit messages: wait for the readings.
        readings = wait_for(lambda: _readings_with(kit.store, "ek-1", {"2.301", "2:300"}), timeout=30,
                            what="the committed readings")
        single = [r for r in readings if r.series == "2.301"]
        assert [r.value for r in single] == ["12345.678"]
        stamps = sorted({r.timestamp for r in readings if r.series == "2:300"})
        docs_range = [s for s in stamps if s <= datetime(2020, 1, 16, 5, tzinfo=UTC)]
        assert docs_range == [datetime(2020, 1, 15, 5, tzinfo=UTC) + timedelta(hours=h) for h in range(25)]
        device_now = sim.model(meter).meter_clock.now().astimezone(UTC)
        assert [s for s in stamps if s > docs_range[-1]] == [device_now.replace(minute=0, second=0, microsecond=0)]
        # The same range again: nothing new, no "changed" events (interval data is idempotent).
        count = kit.store.count_readings("ek-1")
        again = [invoke(celery_app, LIS_BODIES[1])]
        wait_for(lambda: finished(kit.store, again), timeout=60, what="the repeated read")
        # (its commit adds nothing observable; the checks after the next read cover it: the count
        # is unchanged and the only change events are the 50 of the changed history)
        # The meter re-reports its history differently: each changed interval value is an event.
        model = sim.model(meter)
        original = model._quantity
        model._quantity = lambda address, elapsed: original(address, elapsed + 3600.0)
        changed = [invoke(celery_app, LIS_BODIES[1])]
        wait_for(lambda: finished(kit.store, changed), timeout=60, what="the read of changed history")
        model._quantity = original
        events = wait_for(lambda: [e for e in kit.store.list_events(meter="ek-1", limit=1000)
                                   if e.title == "Reading value changed"], timeout=30, what="the change events")
        # the two volume counters moved (pressure and temperature are constant in the simulator)
        assert len(events) == 25 * 2 and kit.store.count_readings("ek-1") == count
        assert all(e.content.startswith(("2:300", "4:300")) for e in events), events[0].content
        # Scheduled: dispatch -> the documented kwargs -> readings (a second pass of the same rows).
        kit.app.send_task("amr.dispatch_schedule", kwargs={"schedule": "hourly"}, queue=queues.AMR)
        (rnd,) = wait_for(lambda: _round_done(kit.store, "hourly"), timeout=90, what="the scheduled round")
        assert [r.amr_task for r in kit.store.list_runs(rnd.round_id)] == ["lis-hourly"]
        # set_time last: the docs' body has no kwargs; the lock is opened with the meter's secret.
        fixed = [invoke(celery_app, LIS_SET_TIME)]
        (run,) = wait_for(lambda: finished(kit.store, fixed), timeout=60, what="set_time")
        assert run.outcome == "done", run.error
        assert abs((sim.model(meter).meter_clock.now() - datetime.now(UTC)).total_seconds()) < 5
        wait_for(lambda: "Time adjusted" in [e.title for e in kit.store.list_events(meter="ek-1")], timeout=30,
                 what="the Time adjusted event")
        worker.signal(15)
        assert worker.wait(60) == 0


def _readings_with(store, meter, series):
    readings = list(store.iter_readings(meter=meter))
    return readings if series <= {r.series for r in readings} else None


def _round_done(store, schedule):
    from utilitarian.amr.progress import round_progress

    return [p for p in round_progress(store, limit=10) if p.schedule == schedule and p.jobs and p.pending == 0
            and p.done == p.jobs]


def test_corus_docs_bodies_from_a_celery_producer_end_in_readings(kit, celery_app):
    device = SimCorusMeter(timezone="Europe/Stockholm", clock_offset=at(datetime(2020, 1, 16, 7, 0, tzinfo=UTC)))
    with CorusSimulator([device]) as sim:
        row = {"name": "corus-1", "url": sim.url() + "?timeout=2", "execution_type": "generic_corus", "uuid": UUID,
               "timezone": "Europe/Stockholm", "can_block": True}
        kit.import_meters([row])
        worker = kit.worker("-c", "1", "--threads", "4")
        ids = [invoke(celery_app, body) for body in CORUS_BODIES]
        runs = wait_for(lambda: finished(kit.store, ids), timeout=90, what="the invoked jobs")
        assert [r.outcome for r in runs] == ["done", "done", "done", "failed"], [r.error for r in runs]
        assert "cannot drive a corus meter" in runs[3].error      # the docs' example names generic_lis200
        readings = wait_for(lambda: _readings_with(kit.store, "corus-1", {
            "index_converted", "index_unconverted", "consumption_unconverted_interval",
            "consumption_converted_hourly"}), timeout=30, what="the committed readings")
        interval = sorted({r.timestamp for r in readings if r.series == "consumption_unconverted_interval"})
        assert interval[0] == datetime(2020, 1, 15, 5, tzinfo=UTC) and interval[-1] == datetime(2020, 1, 16, 5, tzinfo=UTC)
        assert len(interval) == 97                                   # 24 h of 15-minute records, both ends
        failed = wait_for(lambda: [e for e in kit.store.list_events(meter="corus-1") if e.title == "Poll failed"],
                          timeout=30, what="the Poll failed event")
        assert len(failed) == 1 and "cannot drive a corus meter" in failed[0].content
        # run_offset_seconds > 0: the job runs no earlier than that after it arrived (sent on with an ETA).
        delayed = CORUS_BODIES[0].replace('"run_offset_seconds": 0', '"run_offset_seconds": 3')
        sent = datetime.now(UTC)
        original = invoke(celery_app, delayed)
        continuation = str(uuid.uuid5(ID_NAMESPACE, f"on-demand-offset\x00{original}"))
        (run,) = wait_for(lambda: finished(kit.store, [continuation]), timeout=60, what="the delayed job")
        assert run.outcome == "done" and run.finished_at - sent >= timedelta(seconds=3)
        assert kit.store.get_run(original) is None       # the first delivery only sent it on
        worker.signal(15)
        assert worker.wait(60) == 0
