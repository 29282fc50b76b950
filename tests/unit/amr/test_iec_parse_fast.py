"""The readout parser's fast paths (one regex over the data block, the folded BCC, the regex scan for
frame boundaries) against the per-line / per-byte reference they replace: same data sets, same typed
error, for data built from the protocol's alphabet and for arbitrary bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.protocols import iec_datasets as d
from utilitarian.amr.protocols import iec_frames as f

SETTINGS = settings(max_examples=600, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
PIECES = st.sampled_from(["1.8.0", "1-0:1.8.0*255", "F.F", "C.1.0", "(", ")", "*", "kWh", "0001.234",
                          "\r\n", "\n", "\r", " ", "!", "/", "x" * 33, "9" * 129, "u" * 17, "()",
                          "(1*)", "\x7f", "\x01", "é"])
BLOCKS = st.one_of(st.lists(PIECES, max_size=40).map(lambda p: "".join(p).encode("utf-8")),
                   st.binary(max_size=200))


def reference_lines(payload: bytes):
    """What parse_data_lines returned before the fast path: every line through parse_data_line."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        return "non-ascii"
    if any(ord(c) < 32 and c not in "\r\n" or ord(c) == 127 for c in text):
        return "control"
    lines = []
    for no, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if line.strip():
            try:
                lines.append(d.parse_data_line(line, no))
            except MeterProtocolError:
                return "error"
    return lines


def parsed_lines(payload: bytes):
    try:
        return d.parse_data_lines(payload)
    except MeterProtocolError as exc:
        message = str(exc)
        return "non-ascii" if "non-ASCII" in message else "control" if "control" in message else "error"


@SETTINGS
@given(BLOCKS)
def test_data_lines_parse_as_the_line_parser_does(payload):
    assert parsed_lines(payload) == reference_lines(payload)


def test_fast_path_covers_a_simulated_readout():
    text = "0.0.0(10000001)\nF.F(00000000)\n1.8.0(00012345.678*kWh)\n1.6.0(0001.234*kW)(23-01-05 12:15)\n"
    assert d._fast_lines(text) == [line for line in d.parse_data_lines(text.encode())]
    assert d._fast_lines(text) is not None


@SETTINGS
@given(st.binary(max_size=600))
def test_bcc_is_the_xor_of_every_byte(data):
    expected = 0
    for byte in data:
        expected ^= byte
    assert f.bcc(data) == expected


def reference_extract(buf: bytearray):
    """extract_frame as it scanned byte by byte."""
    start = 0
    while start < len(buf) and buf[start] not in (f.SOH, f.STX, f.ACK, f.NAK):
        start += 1
    if start > f.MAX_NOISE:
        return "noise"
    if start == len(buf):
        return None
    end = start + 1
    while end < len(buf) and buf[end] not in (f.ETX, f.EOT):
        end += 1
    return start, end


FRAME_BYTES = st.lists(st.one_of(st.sampled_from([b"\x01", b"\x02", b"\x03", b"\x04", b"\x06", b"\x15",
                                                  b"R1", b"1.8.0(1)", b"z" * 300]),
                                 st.binary(max_size=6)), max_size=30).map(b"".join)


@SETTINGS
@given(FRAME_BYTES)
def test_extract_frame_finds_what_the_byte_scan_found(data):
    buf = bytearray(data)
    ref = reference_extract(buf)
    try:
        got = f.extract_frame(buf)
    except MeterProtocolError as exc:
        assert ref == "noise" or ref is not None and "command" in str(exc), (ref, exc)
        return
    if ref is None or got is None:
        assert got is None and (ref is None or ref[1] >= len(buf) - 1)
        return
    start, end = ref
    consumed, frame = got
    assert consumed == (start + 1 if frame.kind in ("ack", "nak") else end + 2)
