"""`amr.execute_meter_task` for IEC 62056-21 meters over TCP run as a worker child runs a stepwise
task: its waits (answers, reaction times, the commit outbox) parked in a real wait loop
(supervisor/waits.py), against the simulator. A garbled answer stays a typed error (a failed run
and a "Poll failed" event), a timeout goes to the retry policy."""

from __future__ import annotations

import pytest

from support.parked import run_parked
from utilitarian.amr.errors import MeterTimeout
from utilitarian.amr.model import AmrTask
from utilitarian.amr.tasks import execute_meter_task
from utilitarian_sim import Faults, IecSimulator, SimIecMeter

SLOT = "2026-11-24T00:00:00Z"
READOUT = AmrTask("read-iec", "daily", "readout", "generic_iec6205621")


def poll(amr, meter: str, *, retries: int = 0):
    ctx = amr.ctx("amr.execute_meter_task", task_id=f"{meter}/read-iec", retries=retries)
    return run_parked(execute_meter_task.steps(ctx, meter=meter, amr_task=READOUT.name, slot=SLOT, round_id="r"))


def test_parked_iec_polls_store_readings_a_garbled_answer_is_an_event_a_silent_meter_a_retry(amr):
    # Given a good meter, one whose data message comes with a wrong BCC once, and one silent once,
    # each behind its own IP modem
    meters = [SimIecMeter("11111111", name="good", gateway=0),
              SimIecMeter("22222222", name="garbled", gateway=1, faults=Faults(script=("bad_bcc",))),
              SimIecMeter("33333333", name="silent", gateway=2, faults=Faults(script=("timeout",)))]
    with IecSimulator(meters) as sim:
        rows = sim.meter_entries()
        for row in rows:
            row["url"] += "&timeout=0.5"
        amr.import_meters(rows, tasks=[READOUT], group="all")
        # When their polls run parked
        assert poll(amr, "good")["outcome"] == "done"
        # Then a garbled answer is a typed error that ends the job (no retry for a checksum
        # error): a failed run and a "Poll failed" event; the meter's next poll reads it
        garbled = poll(amr, "garbled")
        assert garbled["outcome"] == "failed" and garbled["error"].startswith("checksum: ")
        assert poll(amr, "garbled", retries=1)["outcome"] == "done"
        # and a silent meter's timeout goes to the retry policy; the retry reads it
        with pytest.raises(MeterTimeout):
            poll(amr, "silent")
        assert poll(amr, "silent", retries=1)["outcome"] == "done"
    # Then the readings of every good poll are committed, the failure is an event
    assert {meter for meter, _ in reading_keys(amr)} == {"good", "garbled", "silent"}
    assert {(e.meter, e.title) for e in amr.store.list_events()} == {("garbled", "Poll failed")}


def reading_keys(amr):
    return {(r.meter, r.series) for r, _ in amr.store.tail_readings(limit=1000)}
