"""DLMS/COSEM and M-Bus meters through the whole pipeline: registry import, a dispatched round, the
execute jobs, the commit queues, the store. DLMS over the TCP wrapper without security and over HDLC
on a pty with HLS-GMAC (keys in a file the URL names), M-Bus over a TCP gateway and a pty bus. A
meter with a wrong key and a bus that always collides end as "Poll failed" events after their
retries, with nothing stored for them; then the same rounds run by a real worker process.
"""

from __future__ import annotations

import collections
import signal

from support.amr_harness import wait_for
from utilitarian import queues
from utilitarian.amr.errors import MeterTimeout
from utilitarian.amr.model import AmrTask
from utilitarian.amr.progress import round_progress
from utilitarian.amr.tasks import dispatch_schedule, execute_meter_task
from utilitarian_sim.dlms_meter import SimDlmsMeter
from utilitarian_sim.dlms_server import DlmsSimulator
from utilitarian_sim.faults import Faults
from utilitarian_sim.mbus_sim import MbusSimulator, SimMbusMeter

SLOT = "2026-11-24T00:00:00Z"
DLMS_TASK = AmrTask("dlms-registers", "daily", "read_registers", "generic_dlms",
                    {"registers": ["1-0:1.8.0", "1-0:2.8.0", "1-0:32.7.0", "1-0:31.7.0", "1-0:1.7.0"]})
MBUS_TASK = AmrTask("mbus-read", "daily", "read_values", "generic_mbus")
FAST_RETRIES = """
[tasks."amr.execute_meter_task"]
max_retries = 1
retry_backoff = 0.5
retry_jitter = false
"""


class Fleet:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.dlms_tcp = DlmsSimulator([SimDlmsMeter(name="dlms-tcp"),
                                       SimDlmsMeter(name="dlms-badkey", security="hls-gmac")])
        self.dlms_pty = DlmsSimulator([SimDlmsMeter(name="dlms-pty", security="hls-gmac")], transport="pty")
        self.mbus_tcp = MbusSimulator([SimMbusMeter(1, "10000001", telegrams=2, name="mbus-heat"),
                                       SimMbusMeter(2, "10000002", medium=7, name="mbus-water"),
                                       SimMbusMeter(3, "10000003", faults=Faults(collision=1.0), name="mbus-noisy")])
        self.mbus_pty = MbusSimulator([SimMbusMeter(1, "20000001", name="mbus-pty")], transport="pty")
        self.parts = [self.dlms_tcp, self.dlms_pty, self.mbus_tcp, self.mbus_pty]

    def __enter__(self):
        for part in self.parts:
            part.start()
        return self

    def __exit__(self, *exc):
        for part in reversed(self.parts):
            part.stop()

    def rows(self):
        keys = {}
        for sim in (self.dlms_tcp, self.dlms_pty):
            for meter in sim.meters:
                if meter.security != "none":
                    path = self.tmp / f"{meter.name}.keys"
                    text = sim.key_file_text(meter)
                    if meter.name == "dlms-badkey":
                        text = text.replace(meter.encryption_key.hex(), bytes(16).hex())
                    path.write_text(text)
                    keys[meter.name] = str(path)
        rows = self.dlms_tcp.meter_entries(keys=keys) + self.dlms_pty.meter_entries(keys=keys)
        for row in rows:
            row["url"] += "&timeout=1"
        mbus = self.mbus_tcp.meter_entries() + self.mbus_pty.meter_entries()
        for row in mbus:
            row["url"] += "&timeout=0.5&retries=1"
        return rows, mbus


def install(amr, fleet):
    amr.configure(FAST_RETRIES)
    dlms, mbus = fleet.rows()
    amr.import_meters(dlms, tasks=[DLMS_TASK], group="dlms")
    amr.import_meters(mbus, tasks=[MBUS_TASK], group="mbus")
    return {r["name"]: r for r in dlms + mbus}


def run_round(amr, expect_jobs):
    dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", SLOT)
    jobs = amr.drain(queues.AMR_DAILY, expect=expect_jobs, timeout=15)
    assert len(jobs) == expect_jobs
    outcomes = {}
    for message in jobs:
        meter = message.kwargs["meter"]
        try:
            outcomes[meter] = amr.run(message)["outcome"]
        except MeterTimeout:     # retryable (bus collision): its last attempt records the failure
            last = amr.ctx(message.task, task_id=message.id, retries=1)
            outcomes[meter] = "retried, then " + execute_meter_task(last, **message.kwargs)["outcome"]
    return outcomes


def commit_all(amr):
    for queue in (queues.COMMITS_READINGS, queues.COMMITS_EVENTS, queues.COMMITS):
        for message in amr.drain(queue, timeout=3, expect=None):
            amr.run(message)


def test_a_round_of_dlms_and_mbus_meters_is_committed(amr, tmp_path):
    with Fleet(tmp_path) as fleet:
        rows = install(amr, fleet)
        outcomes = run_round(amr, expect_jobs=7)
    assert outcomes == {"dlms-tcp": "done", "dlms-pty": "done", "dlms-badkey": "failed",
                        "mbus-heat": "done", "mbus-water": "done", "mbus-pty": "done",
                        "mbus-noisy": "retried, then failed"}
    wait_for(lambda: commit_all(amr) or len(amr.store.list_events()) >= 2, timeout=20)
    stored = collections.defaultdict(dict)
    for reading, _ in amr.store.tail_readings(limit=500):
        stored[reading.meter][reading.series] = (reading.value, reading.unit)
    for name in ("dlms-tcp", "dlms-pty", "mbus-heat", "mbus-water", "mbus-pty"):
        assert set(stored[name]) == set(rows[name]["series"]), name
    assert stored["dlms-tcp"]["1-0:1.8.0"][1] == "Wh" and stored["mbus-heat"]["energy"][1] == "kWh"
    assert "dlms-badkey" not in stored and "mbus-noisy" not in stored
    events = {e.meter: e for e in amr.store.list_events()}
    assert set(events) == {"dlms-badkey", "mbus-noisy"}
    assert events["dlms-badkey"].title == "Poll failed" and "authentication" in events["dlms-badkey"].content
    assert "collision" in events["mbus-noisy"].content and "after 2 attempt(s)" in events["mbus-noisy"].content
    [progress] = round_progress(amr.store)
    assert (progress.jobs, progress.done, progress.failed, progress.pending) == (7, 5, 2, 0)


def test_a_worker_process_polls_dlms_and_mbus_meters(amr, tmp_path):
    with Fleet(tmp_path) as fleet:
        install(amr, fleet)
        worker = amr.worker("-c", "1", "--threads", "4")
        dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", SLOT)

        def finished():
            progress = round_progress(amr.store)
            return progress and progress[0].pending == 0 and progress[0]

        progress = wait_for(finished, timeout=90)
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    assert (progress.done, progress.failed) == (5, 2)
    meters = {r.meter for r, _ in amr.store.tail_readings(limit=500)}
    assert meters == {"dlms-tcp", "dlms-pty", "mbus-heat", "mbus-water", "mbus-pty"}
