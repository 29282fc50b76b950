"""pyserial on a real tty (a pty pair) with the simulator on the master side: the request goes out
at 300 baud 7E1, the baud switch really happens, and the simulator checks the speed it sees.

Limits of the evidence: Linux ptys force CS8 without parity whatever the client sets
(drivers/tty/pty.c), so the simulator can observe the speed but not the 7E1 framing; the framing
is asserted from the client's own port settings (`line_history`, read back from pyserial).
This sandbox's pty also rejects a tcsetattr that asks for CS7 and changes nothing else, so each
test uses a fresh simulator (a fresh pty) and only sessions that end after a baud switch share one.
"""

from __future__ import annotations

import pytest

from utilitarian.amr.errors import MeterError
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.protocols.transport import SerialTransport
from utilitarian_sim import IecSimulator, SimIecMeter
from utilitarian.amr.target import parse_meter_url


def open_session(sim, meter, transport=None, **params) -> Iec62056Session:
    query = "".join(f"&{k}={v}" for k, v in {"timeout": "1", **params}.items())
    target = parse_meter_url(sim.url(meter) + query, secret=meter.password)
    return Iec62056Session(target, transport=transport)


def test_readout_on_a_tty_with_baud_switch():
    meter = SimIecMeter("12345678", baud_char="5")   # proposes 9600
    with IecSimulator([meter], transport="pty") as sim:
        assert sim.devices[0].startswith("/dev/")
        session = open_session(sim, meter)
        with session:
            readout = session.readout()
            history = list(session.transport.line_history)
        second = open_session(sim, meter)
        with second:
            second.readout()
    assert readout.identification.baudrate == 9600 and len(readout.datasets) > 5
    # The client opened at 300 7E1 and switched to 9600 7E1 after the ACK ...
    assert history == [("open", 300, 7, "E", 1), ("baud", 9600, 7, "E", 1)]
    # ... and the simulator saw the line at those speeds, for both sessions.
    seen = [(o.step, o.expected, o.seen, o.ok) for o in sim.observations]
    assert seen == [("request", 300, 300, True), ("data", 9600, 9600, True)] * 2
    assert all(o.framing in (None, "7E1") for o in sim.observations)


def test_max_baud_caps_the_switch():
    meter = SimIecMeter("12345678", baud_char="6")   # proposes 19200
    with IecSimulator([meter], transport="pty") as sim:
        with open_session(sim, meter, max_baud="2400") as session:
            session.readout()
    assert [(o.step, o.seen, o.ok) for o in sim.observations] == [("request", 300, True),
                                                                  ("data", 2400, True)]


def test_programming_mode_on_a_tty():
    meter = SimIecMeter("12345678", password="pw", baud_char="4")
    with IecSimulator([meter], transport="pty") as sim:
        with open_session(sim, meter) as session:
            session.enter_programming("pw")
            (dataset,) = session.read("1.8.0")
            session.write("0.9.1", "01:02:03")
    assert dataset.value.unit == "kWh"
    assert sim.model(meter).writes == [("0.9.1", "01:02:03")]
    assert [(o.step, o.seen) for o in sim.observations] == [("request", 300), ("data", 4800)]


class StuckAt300(SerialTransport):
    """A client that forgets to switch speed: the negative control for the simulator's check."""

    def set_baudrate(self, baudrate: int) -> None:
        self.line_history.append(("baud-skipped", baudrate, 7, "E", 1))


def test_simulator_catches_a_client_that_does_not_switch():
    meter = SimIecMeter("12345678", baud_char="5")
    with IecSimulator([meter], transport="pty") as sim:
        target = parse_meter_url(sim.url(meter) + "&timeout=2")
        session = Iec62056Session(target, transport=StuckAt300(target.device, target.serial))
        with pytest.raises(MeterError), session:
            session.readout()
    (request, data) = sim.observations
    assert request.ok and (data.expected, data.seen, data.ok) == (9600, 300, False)
