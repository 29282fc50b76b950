"""The IEC 62056-21 simulator frames messages with its own code (utilitarian_sim.iec_wire), so a
framing bug in the client fails against it. Before, the simulator imported the client's
iec_frames: a wrong block check on both sides agreed and every test passed."""

from __future__ import annotations

import pytest

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import MeterChecksumError, MeterProtocolError
from utilitarian.amr.protocols import iec_frames
from utilitarian.amr.target import parse_meter_url
from utilitarian_sim import IecSimulator, SimIecMeter


def test_a_block_check_bug_in_the_client_fails_against_the_simulator(monkeypatch):
    meter = SimIecMeter("12345678")
    with IecSimulator([meter]) as sim:
        target = parse_meter_url(sim.url(meter) + "&timeout=1")
        assert run_task_call("generic_iec6205621", "readout", target, {}).readings   # control: it works
        # A plausible bug: the check character computed without the closing ETX.
        correct = iec_frames.bcc
        monkeypatch.setattr(iec_frames, "bcc", lambda data: correct(data[:-1]))
        with pytest.raises((MeterChecksumError, MeterProtocolError)):
            run_task_call("generic_iec6205621", "readout", target, {})

