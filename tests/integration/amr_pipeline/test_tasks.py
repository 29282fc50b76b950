"""The AMR tasks called directly with a real TaskContext whose App publishes to the per-test vhost:
dispatch fan-out, polls of simulated Modbus meters, retries and failure events, commits, publishing
to an exchange, cleanup, on-demand polls and promotion through the CLI."""

from __future__ import annotations

import datetime as dt
import json

import pika
import pytest

from support.amr_harness import raw_messages
from utilitarian import queues
from utilitarian.amr.errors import MeterTimeout
from utilitarian.amr.model import AmrTask, MeterReading, iso_utc, job_id
from utilitarian.amr.progress import format_progress, round_progress
from utilitarian_sim.faults import Faults
from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter
from utilitarian.amr.tasks import dispatch_schedule, execute_meter_task
from utilitarian.tasks import Reject

UTC = dt.timezone.utc
SLOT = "2026-11-24T00:00:00Z"
READ = AmrTask("read-daily", "daily", "read_values", "generic_modbus")
QUEUE_COMMITS = "[amr]\ncommit_in_worker = false\n"  # polls' results go through the commit queues


@pytest.fixture
def sim():
    meters = [SimModbusMeter(device_id=i + 1, meter_type="eastron_sdm120") for i in range(3)]
    meters.append(SimModbusMeter(device_id=10, meter_type="eastron_sdm120", name="slow",
                                 faults=Faults(script=("timeout",) * 10)))
    meters.append(SimModbusMeter(device_id=11, meter_type="eastron_sdm120", name="broken",
                                 faults=Faults(exception=1.0, exception_code=2)))
    with ModbusFleetSimulator(meters) as simulator:
        yield simulator


def entries(sim, *, can_block=False):
    rows = sim.meter_entries(can_block=can_block)
    for row in rows:
        row["url"] += "&timeout=0.3"  # the "slow" meter's held answers time out quickly
    return rows


def bind_readings_queue(amr, queue: str) -> None:
    """A queue bound to the `platform.readings` exchange the tests publish readings to."""
    conn = pika.BlockingConnection(pika.URLParameters(amr.broker_url))
    ch = conn.channel()
    ch.exchange_declare("platform.readings", exchange_type="topic", durable=True)
    ch.queue_declare(queue, durable=False)
    ch.queue_bind(queue, "platform.readings", routing_key="new_meter_value.#")
    conn.close()


def run_all(amr, queue, expect):
    messages = amr.drain(queue, expect=expect, timeout=15)
    assert len(messages) == expect, f"{queue}: {len(messages)} of {expect} messages"
    return [amr.run(m, queue) for m in messages]


def test_dispatch_fans_out_once_with_deterministic_ids(amr, monkeypatch):
    rows = [{"name": f"m{i:03d}", "execution_type": "generic_modbus", "meter_type": "eastron_sdm120",
             "url": f"modbus+tcp://127.0.0.1:1502?device_id={i % 200 + 1}", "series": ["voltage"]}
            for i in range(300)]
    weekly = AmrTask("read-weekly", "weekly", "read_values", "generic_modbus")
    later = AmrTask("read-later", "daily", "read_values", "generic_modbus", run_offset_seconds=3600.0)
    iec = AmrTask("read-iec", "daily", "readout", "generic_iec6205621")  # not for Modbus meters
    amr.import_meters(rows, tasks=[READ, weekly, later, iec], group="all")
    slot = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    text = iso_utc(slot)
    # When a daily round is dispatched twice (a duplicate fire)
    first = dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", text)
    second = dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", text)
    # Then 600 jobs exist, 300 run now, 300 wait an hour for a continuation of the dispatch
    assert (first["jobs"], first["published"], first["waiting"], second["published"]) == (600, 300, 300, 0)
    now = amr.drain(queues.AMR_DAILY, expect=300, timeout=15)
    assert len(now) == 300 and amr.drain(queues.AMR_DAILY) == []
    # (the 300 wait as one delayed continuation message, not 300 delayed jobs)
    from utilitarian.broker import delay
    from utilitarian.broker.topology import inspect_queues

    waiting = inspect_queues(amr.settings, [delay.level_queue(n) for n in range(delay.LEVELS)])
    assert sum(q.messages for q in waiting) == 1
    # and when that continuation runs an hour later, it publishes exactly the 300 that are due
    monkeypatch.setattr("utilitarian.amr.tasks.dispatch.utc_now", lambda: slot + dt.timedelta(seconds=3601))
    later = dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", text)
    assert (later["published"], later["waiting"]) == (300, 0)
    assert {m.kwargs["amr_task"] for m in amr.drain(queues.AMR_DAILY, expect=300, timeout=15)} == {"read-later"}
    monkeypatch.undo()
    assert {m.id for m in now} == {job_id(f"m{i:03d}", "read-daily", slot) for i in range(300)}
    assert now[0].kwargs == {"meter": now[0].kwargs["meter"], "amr_task": "read-daily", "slot": text,
                             "round_id": f"daily@{text}"}
    # weekly rounds run on the daily queue
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "weekly", text)
    assert len(amr.drain(queues.AMR_DAILY, expect=300, timeout=15)) == 300
    [weekly_p, daily_p] = round_progress(amr.store)
    assert (daily_p.jobs, weekly_p.jobs, daily_p.pending) == (600, 300, 600)
    with pytest.raises(Reject):
        dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "fortnightly", SLOT)


def test_polls_are_committed_once_and_failures_become_events(amr, sim):
    amr.configure(QUEUE_COMMITS)
    amr.import_meters(entries(sim), tasks=[READ], group="all")
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", SLOT)
    jobs = amr.drain(queues.AMR_DAILY, expect=5, timeout=15)
    outcomes = {}
    for message in jobs:
        try:
            outcomes[message.kwargs["meter"]] = amr.run(message)["outcome"]
        except MeterTimeout:
            outcomes[message.kwargs["meter"]] = "retry"
            # the policy retries it; its last attempt records the failure instead of raising
            last = amr.ctx(message.task, task_id=message.id, retries=3)
            outcomes["slow-last"] = execute_meter_task(last, **message.kwargs)["outcome"]
    assert outcomes == {"sim-modbus-0001": "done", "sim-modbus-0002": "done", "sim-modbus-0003": "done",
                        "slow": "retry", "slow-last": "failed", "broken": "failed"}
    # Then the commit queues carry readings (3 jobs), events (2 failures) and 5 outcomes
    readings = amr.drain(queues.COMMITS_READINGS, expect=3, timeout=15)
    for message in readings + readings:  # every commit delivered twice: nothing changes the 2nd time
        amr.run(message)
    run_all(amr, queues.COMMITS_EVENTS, 2)
    run_all(amr, queues.COMMITS, 5)
    series = len(sim.meter_types["eastron_sdm120"].series)
    assert amr.store.count_readings() == 3 * series
    titles = {(e.meter, e.title) for e in amr.store.list_events()}
    assert titles == {("slow", "Poll failed"), ("broken", "Poll failed")}
    broken = [e for e in amr.store.list_events() if e.meter == "broken"][0]
    assert "unsupported" in broken.content and "after 1 attempt" in broken.content
    [p] = round_progress(amr.store)
    assert (p.jobs, p.done, p.failed, p.pending) == (5, 3, 2, 0)
    assert format_progress([p])[0].startswith("daily 2026-11-24T00:00Z: 5 of 5, finished in")
    # the readings carry the slot as their timestamp: a re-run job rewrites the same keys
    assert {r.timestamp for r, _ in amr.store.tail_readings(limit=100)} == {dt.datetime(2026, 11, 24, tzinfo=UTC)}


def test_polls_commit_their_results_in_the_polling_process_once_and_publish_them(amr, sim):
    # Given publishing to an exchange and the default [amr] commit_in_worker
    amr.configure('[amr.publish]\nexchange = "platform.readings"\n')
    amr.import_meters(entries(sim), tasks=[READ], group="all")
    bind_readings_queue(amr, "platform-direct")
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", SLOT)
    jobs = amr.drain(queues.AMR_DAILY, expect=5, timeout=15)
    # When every job runs (the slow meter on its last attempt), and the first one runs again as
    # after a kill between its commit and its ack
    for message in jobs + jobs[:1]:
        try:
            amr.run(message)
        except MeterTimeout:
            execute_meter_task(amr.ctx(message.task, task_id=message.id, retries=3), **message.kwargs)
    # Then the results are in the store when the calls return, no commit message was sent, and
    # the publish tasks are: each reading once in the store, at least once on the exchange
    for queue in (queues.COMMITS_READINGS, queues.COMMITS_EVENTS, queues.COMMITS):
        assert amr.drain(queue, timeout=1, expect=None) == []
    series = len(sim.meter_types["eastron_sdm120"].series)
    assert amr.store.count_readings() == 3 * series and amr.store.outbox_size() == 0
    assert {(e.meter, e.title) for e in amr.store.list_events()} == {("slow", "Poll failed"), ("broken", "Poll failed")}
    [p] = round_progress(amr.store)
    assert (p.jobs, p.done, p.failed, p.pending) == (5, 3, 2, 0)
    for message in amr.drain(queues.EXTERNAL_PUBLISH, timeout=3, expect=None):
        amr.run(message, queues.EXTERNAL_PUBLISH)
    got = raw_messages(amr.broker_url, "platform-direct", expect=3 * series)
    assert len({key for key, _, _ in got}) == 3 * series


def test_a_job_the_worker_gives_up_on_still_finishes_its_round(amr, sim):
    # Given a round of 5 jobs, one of which the worker dead-letters (a store error past its last
    # retry, say): the task's on_failure hook records the failed run and a "Poll failed" event
    amr.configure(QUEUE_COMMITS)
    amr.import_meters(entries(sim), tasks=[READ], group="all")
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", SLOT)
    jobs = amr.drain(queues.AMR_DAILY, expect=5, timeout=15)
    given_up = jobs[0]
    for message in jobs[1:]:
        try:
            amr.run(message)
        except MeterTimeout:  # the "slow" meter: its last attempt records the failure
            execute_meter_task(amr.ctx(message.task, task_id=message.id, retries=3), **message.kwargs)
    hook = execute_meter_task.__task_spec__.on_failure
    hook(amr.ctx(given_up.task, task_id=given_up.id, retries=3), RuntimeError("store unavailable"),
         given_up.args, given_up.kwargs)
    run_all(amr, queues.COMMITS, 5)
    for message in amr.drain(queues.COMMITS_EVENTS):  # all confirmed before the calls returned
        amr.run(message)
    [p] = round_progress(amr.store)
    assert p.pending == 0 and p.done + p.failed == 5
    events = [e for e in amr.store.list_events() if e.meter == given_up.kwargs["meter"]]
    assert [e.title for e in events] == ["Poll failed"] and "store unavailable" in events[0].content


def test_committed_readings_are_published_to_the_exchange(amr):
    amr.configure('[amr.publish]\nexchange = "platform.readings"\n')
    amr.import_meters([{"name": "m1", "execution_type": "generic_modbus", "meter_type": "eastron_sdm120",
                        "url": "modbus+tcp://127.0.0.1:1502?device_id=1",
                        "series": ["active_energy_import", "voltage"]}])
    bind_readings_queue(amr, "platform-test")
    wire = [{"meter": "m1", "series": "active_energy_import", "timestamp": SLOT, "value": "12.5", "unit": "kWh"},
            {"meter": "m1", "series": "voltage", "timestamp": SLOT, "value": "230", "unit": "V"},
            {"meter": "nobody", "series": "voltage", "timestamp": SLOT, "value": "1", "unit": "V"}]
    result = amr.run(amr_message("commits.save_meter_readings", readings=wire))
    assert (result["inserted"], result["staged"]) == (2, 1)
    run_all(amr, queues.EXTERNAL_PUBLISH, 1)
    got = raw_messages(amr.broker_url, "platform-test", expect=2)
    assert sorted(key for key, _, _ in got) == ["new_meter_value.m1.active-energy-import.v1",
                                                "new_meter_value.m1.voltage.v1"]
    body = json.loads(got[0][2])
    assert set(body) == {"meter", "series", "timestamp", "value", "id_type"} and body["id_type"] == "name"


def amr_message(task, **kwargs):
    from utilitarian.protocol import TaskMessage

    return TaskMessage(id="t-" + task, task=task, args=(), kwargs=kwargs)


def test_retention_and_stale_blocks_are_cleaned(amr):
    amr.configure("[amr]\ndata_retention_days = 30.0\ncleanup_batch_size = 100\n")
    amr.import_meters([{"name": "m1", "execution_type": "generic_modbus", "meter_type": "eastron_sdm120",
                        "url": "modbus+tcp://127.0.0.1:1502?device_id=1", "can_block": True}])
    now = dt.datetime.now(UTC)
    old = [MeterReading("m1", "voltage", now - dt.timedelta(days=60, minutes=k), "1") for k in range(250)]
    fresh = [MeterReading("m1", "voltage", now - dt.timedelta(minutes=k), "1") for k in range(5)]
    amr.store.commit_readings(old + fresh)
    iface = amr.store.get_meter("m1").interface
    assert amr.store.acquire_block(iface.id, "gone:1:x", lease=5.0, now=0.0)
    result = amr.run(amr_message("cleanup.apply_retention"))
    assert result["deleted"]["meter_reading"] == 250 and result["released_blocks"] == 1
    assert amr.store.count_readings() == 5


def test_on_demand_poll_and_promotion_through_the_cli(amr, sim):
    # Given readings that arrived for a meter the registry does not know yet
    amr.configure(QUEUE_COMMITS)
    amr.store.commit_readings([MeterReading("sim-modbus-0001", "voltage", dt.datetime(2026, 1, 1, tzinfo=UTC), "1")])
    meters = amr.tmp / "meters.toml"
    from support.amr_harness import render_meter_list

    meters.write_text(render_meter_list(entries(sim)[:1]))
    # When the meter is imported, its staged readings are promoted by a task on the default queue
    code, out = amr.cli("meters import", str(meters))
    assert code == 0, out
    run_all(amr, queues.DEFAULT, 1)
    assert amr.store.count_readings("sim-modbus-0001") == 1 and amr.store.list_staged() == []
    # and `utilitarian poll` enqueues one on-demand job that polls it
    code, out = amr.cli("poll", "sim-modbus-0001", "--call", "read_values", "--kwargs", '{"series": ["voltage"]}')
    assert code == 0, out
    [job] = amr.drain(queues.AMR_ON_DEMAND, expect=1)
    assert amr.run(job)["readings"] == 1
    run_all(amr, queues.COMMITS_READINGS, 1)
    assert amr.store.count_readings("sim-modbus-0001") == 2


def test_a_busy_interface_defers_the_job_and_a_dead_holder_is_taken_over(amr, sim):
    import socket
    import subprocess
    import time

    from utilitarian.amr.blocking import interface_lock
    from utilitarian.tasks import Defer

    amr.configure("[amr]\ninterface_wait = 0.2\ninterface_defer = 4.0\n")
    amr.import_meters(entries(sim, can_block=True)[:1], tasks=[READ], group="all")
    meter = amr.store.get_meter("sim-modbus-0001")
    # Given another live job holds the bus
    with interface_lock(amr.store, meter.interface.id, meter.interface.name, "other-job", lease=60, wait=0):
        ctx = amr.ctx("amr.execute_meter_task")
        with pytest.raises(Defer) as info:
            execute_meter_task(ctx, "sim-modbus-0001", "read-daily", SLOT, "r")
        assert 3.0 <= info.value.countdown <= 6.0 and "busy" in str(info.value)
    # Given a holder on this host whose process is gone (a SIGKILLed worker child)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = f"{socket.gethostname()}:{gone.pid}:lost-job"
    assert amr.store.acquire_block(meter.interface.id, dead, lease=600, now=time.time())
    # Then the next job takes the bus over at once instead of waiting for the lease
    assert execute_meter_task(amr.ctx("amr.execute_meter_task"), "sim-modbus-0001", "read-daily", SLOT,
                              "r")["outcome"] == "done"
    assert amr.store.block_holder(meter.interface.id) is None


def test_a_job_waiting_for_a_busy_interface_in_a_worker_parks_instead_of_sleeping(amr, sim):
    import time

    from utilitarian import steps, telemetry
    from utilitarian.amr.blocking import interface_lock
    from utilitarian.amr.metrics import BLOCK_WAITS
    from utilitarian.tasks import Defer

    def waiting() -> float:
        return telemetry.REGISTRY.values.get((BLOCK_WAITS.name, ()), 0.0)

    before = waiting()
    amr.configure("[amr]\ninterface_wait = 0.5\ninterface_defer = 4.0\n")
    amr.import_meters(entries(sim, can_block=True)[:1], tasks=[READ], group="all")
    meter = amr.store.get_meter("sim-modbus-0001")
    with interface_lock(amr.store, meter.interface.id, meter.interface.name, "other-job", lease=60, wait=0):
        # As a worker runs it: the steps' generator. While the bus is busy it yields pauses (the
        # worker parks them; a step thread would otherwise sleep up to interface_wait per job).
        job = execute_meter_task.__task_spec__.steps(amr.ctx("amr.execute_meter_task"), "sim-modbus-0001",
                                                     "read-daily", SLOT, "r")
        began = time.monotonic()
        pauses = []
        with pytest.raises(Defer):
            wait = next(job)
            while True:
                assert isinstance(wait, steps.Until) and wait.event is steps.NEVER, wait
                pauses.append(wait.deadline - time.monotonic())
                assert waiting() == before + 1
                time.sleep(max(0.0, wait.deadline - time.monotonic()))
                wait = job.send(False)
        assert len(pauses) >= 2 and all(0 < p <= 0.31 for p in pauses), pauses
        assert 0.45 <= time.monotonic() - began < 3.0
        assert waiting() == before


def test_webhook_posts_retries_then_gives_up(amr):
    import http.server
    import threading

    from utilitarian.tasks import Retry

    answers, bodies = [200, 503, 503], []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(answers.pop(0))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        amr.configure(f'[amr.publish]\nwebhook_url = "http://127.0.0.1:{server.server_address[1]}/r"\n'
                      "webhook_retries = 1\nwebhook_backoff = 0.5\n")
        wire = [{"meter": "m1", "series": "voltage", "timestamp": SLOT, "value": "230", "unit": "V"}]
        assert amr.run(amr_message("external.post_meter_readings", readings=wire)) == {"posted": 1, "status": 200}
        assert bodies[0]["readings"][0] == {"meter": "m1", "series": "voltage", "timestamp": SLOT,
                                            "value": "230", "id_type": "name"}
        with pytest.raises(Retry) as info:
            amr.run(amr_message("external.post_meter_readings", readings=wire))
        assert info.value.countdown == 0.5
        from utilitarian.protocol import TaskMessage

        last = TaskMessage(id="w", task="external.post_meter_readings", args=(), kwargs={"readings": wire}, retries=1)
        with pytest.raises(Reject, match="webhook failed 2 times"):
            amr.run(last)
    finally:
        server.shutdown()
