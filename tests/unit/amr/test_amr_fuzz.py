"""Hypothesis: any bytes from a meter end in a value or a typed MeterError, never another exception,
never a hang. Default runs are short; `-m slow` runs 100,000 examples.

The session fuzz uses an in-memory line with a fake clock: it checks parser and state-machine
robustness, not that the protocol works (the integration tests do that against real peers).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilitarian.amr.errors import MeterError
from utilitarian.amr.protocols import iec_frames as f
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.protocols.iec_datasets import parse_data_block, parse_data_lines, parse_readout
from utilitarian.amr.protocols.lis200 import Lis200Client, check_lis_answer
from utilitarian.amr.target import parse_meter_url

DEFAULT = settings(max_examples=400, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100_000, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

# Bytes biased towards the protocol's alphabet so the fuzz reaches deep states, plus anything.
PROTOCOL_BYTES = st.sampled_from([b"/", b"!", b"\r\n", b"(", b")", b"*", b"\x01", b"\x02", b"\x03",
                                  b"\x04", b"\x06", b"\x15", b"ISk5", b"\\2", b"P0", b"1.8.0",
                                  b"#0017", b"0", b"\xff", b"\x00"])
METER_BYTES = st.one_of(st.binary(max_size=300),
                        st.lists(st.one_of(PROTOCOL_BYTES, st.binary(max_size=8)), max_size=60)
                        .map(b"".join))


class FakeLine:
    """Returns scripted chunks, then silence while a fake clock runs on: never blocks."""

    can_switch_baud = False

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.now = 0.0
        self.sent = bytearray()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def open(self, timeout): pass
    def close(self): pass
    def drain(self): pass
    def set_baudrate(self, baudrate): pass

    def write(self, data: bytes) -> None:
        self.sent += data

    def read(self, timeout: float) -> bytes:
        if self.chunks:
            self.now += 0.001
            return self.chunks.pop(0)
        self.now += timeout
        return b""


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def run_every_parser(data: bytes, cuts: list[int]) -> None:
    """Feed `data` to each parser and to whole sessions; only MeterError may come out."""
    for parse in (f.parse_identification_line, parse_data_block, parse_data_lines, parse_readout):
        try:
            parse(data)
        except MeterError:
            pass
    for extractor in (f.IdentificationExtractor(), f.extract_frame):
        buf = bytearray(data)
        try:
            while (result := extractor(buf)) is not None and result[0] > 0:
                del buf[:result[0]]
        except MeterError:
            pass
    try:
        check_lis_answer(data.decode("latin-1"), "fuzz")
    except MeterError:
        pass
    target = parse_meter_url("iec62056-21+tcp://h:1?address=1&timeout=1&session_timeout=20")
    for operation in ("readout", "programming", "lis200"):
        line = FakeLine(_chunks(data, cuts))
        session = Iec62056Session(target, transport=line, clock=line.clock, sleep=line.sleep)
        try:
            with session:
                if operation == "readout":
                    session.readout()
                elif operation == "programming":
                    session.enter_programming("pw")
                    session.read("1.8.0")
                    session.read_partial("3:V.0", "3;;;10")
                    session.write("0.9.1", "12:00:00")
                else:
                    client = Lis200Client(session, ZoneInfo("UTC"))
                    client.sign_on()
                    client.archive_columns(3, 3)
                    client.archive_rows(3, control_position=3)
        except MeterError:
            pass
        # Bounded: the fake clock never passes the session timeout by more than one read.
        assert line.now <= target.session_timeout + target.timeout + 1


@DEFAULT
@given(data=METER_BYTES, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_only_raise_typed_errors(data, cuts):
    run_every_parser(data, cuts)


@DEFAULT
@given(body=st.lists(st.one_of(PROTOCOL_BYTES, st.binary(max_size=6)), max_size=30).map(b"".join))
def test_framed_random_payloads_reach_the_parsers(body):
    # A valid sign-on followed by a block with a correct BCC around random content.
    ident = b"/ISk5MT174\r\n"
    block = f.build_block(body)
    run_every_parser(ident + block + f.build_command("P0", body) + b"\x06" + block, [3, 12, 40])


@pytest.mark.slow
@SLOW
@given(data=METER_BYTES, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_only_raise_typed_errors_100k(data, cuts):
    run_every_parser(data, cuts)
