"""The IEC 62056-21 session over TCP as a stepwise task (utilitarian/steps.py): the same protocol
code driven blocking (steps.drive, as `utilitarian read` runs it) and parked in a real wait loop
(supervisor/waits.py, as a worker child runs it), against real TCP peers: a byte-scripted meter,
hand-written misbehaving peers and the simulator. Timeouts, typed errors and the readout parser
must not depend on the driver."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timezone

import pytest

from support.connect_peers import full_backlog, refusing_port
from support.parked import run_parked
from utilitarian import steps
from utilitarian.amr.environments import prepare_call, run_prepared, run_prepared_steps
from utilitarian.amr.errors import MeterChecksumError, MeterProtocolError, MeterTimeout, MeterUnreachable
from utilitarian.amr.protocols import iec_frames as f
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.target import parse_meter_url
from utilitarian_sim import Faults, IecSimulator, SimIecMeter

REQUEST = b"/?12345678!\r\n"
IDENT = b"/ISk5MT174-0001\r\n"                   # lower-case k: 20 ms reaction time
ACK_READOUT_TCP = b"\x06000\r\n"
DATA = b"0.0.0(12345678)\r\nF.F(00000000)\r\n1.8.0(0012345.678*kWh)\r\n1-0:2.8.0*255(0000010.5*kWh)\r\n!\r\n"

DRIVERS = {"drive": steps.drive, "parked": run_parked}


@pytest.fixture(params=sorted(DRIVERS))
def driver(request):
    return DRIVERS[request.param]


def target_of(port: int, **params):
    params = {"address": "12345678", "timeout": "1", **params}
    return parse_meter_url(f"iec62056-21+tcp://127.0.0.1:{port}?" + "&".join(f"{k}={v}" for k, v in params.items()))


def readout(driver, target):
    with Iec62056Session(target) as session:
        return driver(session.readout_steps())


def serve(handler) -> int:
    """A one-connection TCP peer running `handler(conn)` in a thread; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        with listener:
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                try:
                    handler(conn)
                except OSError:
                    pass

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def expect(conn: socket.socket, data: bytes) -> None:
    got = b""
    while len(got) < len(data):
        chunk = conn.recv(len(data) - len(got))
        assert chunk, f"client hung up after {got!r}"
        got += chunk
    assert got == data


def hold(conn: socket.socket) -> None:
    """Stay silent until the client hangs up (a live line that sends nothing)."""
    while conn.recv(100):
        pass


def test_a_readout_parks_the_identification_and_then_one_wait_for_the_option_select_and_data(scripted_meter):
    # Given a meter answering the request with its identification and the ACK with its data
    peer = scripted_meter([(REQUEST, IDENT), (ACK_READOUT_TCP, f.build_block(DATA))])
    waits: list = []
    # When the readout runs parked
    with Iec62056Session(target_of(peer.port)) as session:
        result = run_parked(session.readout_steps(), waits=waits)
        fd = session.transport._fd
    # Then it waited for the identification, then once for the option select (sent by the wait
    # loop after the 20 ms reaction time) and the data message, all parked waits on this
    # session's socket (an answer split by TCP is another Readable). The connect to loopback has
    # finished by the time connect returns, unless the kernel deferred the handshake: then its
    # wait comes first.
    peer.check()
    assert peer.received == [REQUEST, ACK_READOUT_TCP]
    assert peer.received_at[1] - peer.replied_at[0] >= 0.02  # the meter saw the reaction time kept
    if type(waits[0]) is steps.Writable:
        assert waits.pop(0).fd == fd
    assert type(waits[0]) is steps.Readable and waits[0].fd == fd
    assert type(waits[1]) is steps.Ask and waits[1].fd == fd and waits[1].data == ACK_READOUT_TCP
    assert all(type(w) is steps.Readable and w.fd == fd for w in waits[2:])
    assert [(d.address, d.value.number) for d in result.datasets][2:] == [("1.8.0", "12345.678"),
                                                                          ("1-0:2.8.0*255", "10.5")]


def open_sockets() -> set[str]:
    """This process's open sockets (their inodes)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the directory's own descriptor, closed by now
            continue
        if link.startswith("socket:"):
            found.add(link)
    return found


def test_a_connect_that_does_not_complete_is_a_wait_that_times_out(driver):
    # Given a gateway whose listen backlog is full (its handshake never completes)
    with full_backlog() as port:
        before = open_sockets()
        waits: list = []
        # When a readout connects to it with a read timeout of 0.3 s
        with pytest.raises(MeterUnreachable, match="connect timed out") as info:
            with Iec62056Session(target_of(port, timeout="0.3")) as session:
                if driver is run_parked:
                    run_parked(session.readout_steps(), waits=waits)
                else:
                    driver(session.readout_steps())
    # Then the connect was one Writable wait (parked: no thread held), it timed out retryably,
    # and its socket is closed
    assert info.value.retryable and open_sockets() <= before
    if driver is run_parked:
        assert [type(w) for w in waits] == [steps.Writable]


def test_a_refused_connect_is_unreachable_by_both_drivers(driver):
    before = open_sockets()
    with pytest.raises(MeterUnreachable, match="refused") as info:
        readout(driver, target_of(refusing_port()))
    assert info.value.retryable and open_sockets() <= before


def test_a_task_closed_while_its_connect_waits_leaves_no_socket_open():
    with full_backlog() as port:
        before = open_sockets()
        session = Iec62056Session(target_of(port, timeout="30"))
        gen = session.readout_steps()
        wait = next(gen)
        assert type(wait) is steps.Writable and os.readlink(f"/proc/self/fd/{wait.fd}") not in before
        # As a worker closes a parked task at its hard limit: the generator's finally blocks run
        gen.close()
        session.close()
        assert open_sockets() <= before


def test_the_reaction_pause_is_kept_by_both_drivers(driver, scripted_meter):
    # upper-case H: the meter asks for 200 ms before the option select
    peer = scripted_meter([(REQUEST, b"/EMH5\\2LZQJL0014F\r\n"), (ACK_READOUT_TCP, f.build_block(DATA))])
    result = readout(driver, target_of(peer.port))
    peer.check()
    # between the identification leaving the meter and the option select reaching it
    assert peer.received_at[1] - peer.replied_at[0] >= 0.2
    assert result.identification.enhanced == "2" and len(result.datasets) == 4


def test_a_timeout_mid_readout_is_the_read_timeout(driver):
    # Given a meter that stops after half of its data message and keeps the line open
    block = f.build_block(DATA)

    def half_then_silence(conn):
        expect(conn, REQUEST)
        conn.sendall(IDENT)
        expect(conn, ACK_READOUT_TCP)
        conn.sendall(block[:len(block) // 2])
        hold(conn)

    target = target_of(serve(half_then_silence), timeout="0.4", session_timeout="10")
    with Iec62056Session(target) as session:
        gen = session.readout_steps()
        started = time.monotonic()
        # Then the data message times out one read timeout after its last bytes, not at the
        # session deadline
        with pytest.raises(MeterTimeout, match="no data message within 0.4s"):
            driver(gen)
    assert 0.4 <= time.monotonic() - started < 2.0


def test_bytes_arriving_restart_the_read_timeout(driver):
    # Given a slow line: the data message in six pieces 0.15 s apart, 0.75 s in all
    block = f.build_block(DATA)

    def trickle(conn):
        expect(conn, REQUEST)
        conn.sendall(IDENT)
        expect(conn, ACK_READOUT_TCP)
        size = -(-len(block) // 6)
        for start in range(0, len(block), size):
            time.sleep(0.15)
            conn.sendall(block[start:start + size])
        hold(conn)

    # Then a read timeout of 0.4 s is enough: each piece restarts it
    result = readout(driver, target_of(serve(trickle), timeout="0.4"))
    assert len(result.datasets) == 4


def test_the_session_deadline_bounds_a_babbling_meter(driver):
    def babble(conn):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conn.sendall(b"x")
            time.sleep(0.05)

    started = time.monotonic()
    with pytest.raises((MeterTimeout, MeterProtocolError)):
        readout(driver, target_of(serve(babble), timeout="1", session_timeout="1.2"))
    assert time.monotonic() - started < 2.5


def test_a_wrong_bcc_is_a_checksum_error(driver, scripted_meter):
    block = f.build_block(DATA)
    peer = scripted_meter([(REQUEST, IDENT), (ACK_READOUT_TCP, block[:-1] + bytes([block[-1] ^ 0x20]))])
    with pytest.raises(MeterChecksumError):
        readout(driver, target_of(peer.port))


def test_a_garbled_identification_is_a_protocol_error(driver, scripted_meter):
    # "/" starts a line that is no identification; nothing better follows before the read timeout
    peer = scripted_meter([(REQUEST, b"/\xff\x00garbled\r\n")])
    with pytest.raises(MeterProtocolError):
        readout(driver, target_of(peer.port, timeout="0.3"))


def test_a_line_without_read_steps_blocks_in_its_thread_and_yields_nothing():
    # A serial line (here a scripted one with only `read`) keeps the synchronous path: no waits
    # are yielded, the reaction pause is slept in the thread.
    class Line:
        can_switch_baud = False

        def __init__(self):
            self.answers = [IDENT, f.build_block(DATA)]

        def open(self, timeout):
            pass

        def close(self):
            pass

        def write(self, data):
            pass

        def read(self, timeout):
            return self.answers.pop(0) if self.answers else b""

        def drain(self):
            pass

    with Iec62056Session(target_of(1), transport=Line()) as session:
        gen = session.readout_steps()
        with pytest.raises(StopIteration) as stop:
            next(gen)
    assert len(stop.value.value.datasets) == 4


@pytest.mark.parametrize("fault,error", [("bad_bcc", MeterChecksumError), ("garble", (MeterTimeout, MeterProtocolError)),
                                         ("timeout", MeterTimeout)])
def test_the_environment_parked_against_the_simulator(fault, error):
    # Given simulated meters, the first answer of one of them faulty
    good, bad = SimIecMeter("11111111"), SimIecMeter("22222222", faults=Faults(script=(fault,)))
    prepared = prepare_call("generic_iec6205621", "readout", {})
    now = datetime.now(timezone.utc)
    with IecSimulator([good, bad]) as sim:
        def target(meter):
            return parse_meter_url(sim.url(meter) + "&timeout=0.5")

        # When the readout task call runs parked, and blocking
        parked = run_parked(run_prepared_steps(prepared, target(good), now=now))
        blocking = run_prepared(prepared, target(good), now=now)
        # Then both give the same readings, and the fault is the same typed error
        with pytest.raises(error):
            run_parked(run_prepared_steps(prepared, target(bad), now=now))
        assert run_parked(run_prepared_steps(prepared, target(bad), now=now)).readings  # recovered
    assert parked.readings and parked == blocking
