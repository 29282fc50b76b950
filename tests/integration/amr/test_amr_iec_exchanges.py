"""Byte-exact IEC 62056-21 exchanges against a scripted TCP peer: what the client sends, step by step,
and what it makes of good and bad answers."""

from __future__ import annotations

import time

import pytest

from utilitarian.amr.errors import (MeterAuthenticationError, MeterChecksumError,
                                    MeterProtocolError, MeterTimeout, MeterUnreachable)
from utilitarian.amr.protocols import iec_frames as f
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.target import parse_meter_url

REQUEST = b"/?12345678!\r\n"
IDENT = b"/ISk5MT174-0001\r\n"                   # lower-case k: 20 ms reaction time
ACK_READOUT_TCP = b"\x06000\r\n"                 # over TCP: ask the meter to stay at 300 baud
ACK_PROGRAMMING_TCP = b"\x06001\r\n"
DATA = b"0.0.0(12345678)\r\nF.F(00000000)\r\n1.8.0(0012345.678*kWh)\r\n1-0:2.8.0*255(0000010.5*kWh)\r\n!\r\n"


def session(peer, **params) -> Iec62056Session:
    params.setdefault("address", "12345678")
    params.setdefault("timeout", "1")
    return Iec62056Session(parse_meter_url(peer.url(**params)))


def test_readout_exchange(scripted_meter):
    # Given a meter answering the request with its identification and the ACK with data
    peer = scripted_meter([(REQUEST, IDENT), (ACK_READOUT_TCP, f.build_block(DATA))])
    # When the client reads it out
    with session(peer) as s:
        readout = s.readout()
    # Then it sent exactly the request and the option select, and parsed the data message
    peer.check()
    assert peer.received == [REQUEST, ACK_READOUT_TCP]
    assert str(readout.identification) == "/ISk5MT174-0001"
    assert [(d.address, d.value.number, d.value.unit) for d in readout.datasets][2:] == \
        [("1.8.0", "12345.678", "kWh"), ("1-0:2.8.0*255", "10.5", "kWh")]
    assert peer.trailing == b""  # readout mode ends without B0


def test_identification_with_enhanced_capability_and_slow_reaction(scripted_meter):
    peer = scripted_meter([(REQUEST, b"/EMH5\\2LZQJL0014F\r\n"), (ACK_READOUT_TCP, f.build_block(DATA))])
    started = time.monotonic()
    with session(peer) as s:
        readout = s.readout()
    peer.check()
    assert readout.identification.enhanced == "2"
    assert time.monotonic() - started >= 0.2   # upper-case H: waited 200 ms before the ACK


def test_garbage_before_identification_is_skipped(scripted_meter):
    noise = b"\x00\xffCONNECT 9600\r\n\x13"
    peer = scripted_meter([(REQUEST, noise + IDENT), (ACK_READOUT_TCP, f.build_block(DATA))])
    with session(peer) as s:
        assert len(s.readout().datasets) == 4
    peer.check()


def test_wrong_bcc_in_readout(scripted_meter):
    block = f.build_block(DATA)
    peer = scripted_meter([(REQUEST, IDENT), (ACK_READOUT_TCP, block[:-1] + bytes([block[-1] ^ 0x20]))])
    with pytest.raises(MeterChecksumError), session(peer) as s:
        s.readout()


def test_missing_end_marker(scripted_meter):
    peer = scripted_meter([(REQUEST, IDENT), (ACK_READOUT_TCP, f.build_block(DATA.replace(b"!\r\n", b"")))])
    with pytest.raises(MeterProtocolError, match="'!'"), session(peer) as s:
        s.readout()


def test_silent_meter_is_a_timeout_within_the_read_timeout(scripted_meter):
    peer = scripted_meter([(REQUEST, b"")])
    started = time.monotonic()
    with pytest.raises(MeterTimeout, match="identification"), session(peer, timeout="0.3") as s:
        s.readout()
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_unreachable():
    import socket
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    target = parse_meter_url(f"iec62056-21+tcp://127.0.0.1:{port}?timeout=0.5")
    with pytest.raises(MeterUnreachable) as info:
        Iec62056Session(target).open()
    assert info.value.retryable


def test_programming_mode_password_read_write_break(scripted_meter):
    p0 = f.build_command("P0", b"(12345678)")
    p1 = f.build_command("P1", b"(s3cret)")
    r1 = f.build_command("R1", b"1.8.0()")
    answer = f.build_block(b"1.8.0(0012345.678*kWh)")
    w1 = f.build_command("W1", b"0.9.1(12:00:00)")
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, p0), (p1, b"\x06"),
                           (r1, answer), (w1, b"\x06")])
    with session(peer, password="s3cret") as s:
        assert s.enter_programming(s.target.password) == "12345678"
        (dataset,) = s.read("1.8.0")
        s.write("0.9.1", "12:00:00")
    peer.check()
    assert peer.received == [REQUEST, ACK_PROGRAMMING_TCP, p1, r1, w1]
    assert dataset.value.number == "12345.678"
    assert peer.trailing == f.build_command("B0")  # the session ends with a break


def test_nak_after_password_is_an_authentication_error(scripted_meter, caplog):
    caplog.set_level("DEBUG")
    p0 = f.build_command("P0", b"(12345678)")
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, p0),
                           (f.build_command("P1", b"(wrong-pw)"), b"\x15")])
    with pytest.raises(MeterAuthenticationError) as info, session(peer) as s:
        s.enter_programming("wrong-pw")
    peer.check()
    assert "wrong-pw" not in str(info.value)
    assert "wrong-pw" not in caplog.text


def test_bad_bcc_answer_is_naked_and_repeat_accepted(scripted_meter):
    r1 = f.build_command("R1", b"1.8.0()")
    answer = f.build_block(b"1.8.0(1*kWh)")
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, f.build_command("P0", b"()")),
                           (r1, answer[:-1] + b"\x00"), (b"\x15", answer)])
    with session(peer) as s:
        s.enter_programming()
        assert s.read("1.8.0")[0].value.raw == "1"
    peer.check()


def test_nak_repeats_are_bounded(scripted_meter):
    r1 = f.build_command("R1", b"1.8.0()")
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, f.build_command("P0", b"()")),
                           (r1, b"\x15"), (r1, b"\x15"), (r1, b"\x15")])
    with pytest.raises(MeterProtocolError, match="NAK"), session(peer, retries="2") as s:
        s.enter_programming()
        s.read("1.8.0")
    peer.check()
    assert peer.received.count(r1) == 3


def test_checksum_error_after_bounded_repeats(scripted_meter):
    r1 = f.build_command("R1", b"1.8.0()")
    broken = f.build_block(b"1.8.0(1*kWh)")[:-1] + b"\x00"
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, f.build_command("P0", b"()")),
                           (r1, broken), (b"\x15", broken), (b"\x15", broken)])
    with pytest.raises(MeterChecksumError), session(peer, retries="2") as s:
        s.enter_programming()
        s.read("1.8.0")


def test_partial_blocks_are_acknowledged(scripted_meter):
    r3 = f.build_command("R3", b"3:V.0(3;;;2)")
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, f.build_command("P0", b"()")),
                           (r3, f.build_block(b"(1)(a)\r\n(2)(b)\r\n", final=False)),
                           (b"\x06", f.build_block(b"(3)(c)\r\n"))])
    with session(peer) as s:
        s.enter_programming()
        blocks = s.read_partial("3:V.0", "3;;;2")
    peer.check()
    assert blocks == [b"(1)(a)\r\n(2)(b)\r\n", b"(3)(c)\r\n"]


def test_error_answer_to_r1(scripted_meter):
    r1 = f.build_command("R1", b"9.9.9()")
    peer = scripted_meter([(REQUEST, IDENT), (ACK_PROGRAMMING_TCP, f.build_command("P0", b"()")),
                           (r1, f.build_block(b"(ERROR)"))])
    with pytest.raises(Exception) as info, session(peer) as s:
        s.enter_programming()
        s.read("9.9.9")
    assert info.value.kind == "unsupported"


def test_session_timeout_bounds_a_trickling_meter(scripted_meter):
    # A meter that keeps sending noise slowly never completes a message: the session deadline ends it.
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def trickle():
        conn, _ = listener.accept()
        with conn:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.05)

    threading.Thread(target=trickle, daemon=True).start()
    target = parse_meter_url(f"iec62056-21+tcp://127.0.0.1:{port}?timeout=1&session_timeout=1.5")
    started = time.monotonic()
    with pytest.raises((MeterTimeout, MeterProtocolError)), Iec62056Session(target) as s:
        s.readout()
    assert time.monotonic() - started < 2.5
    listener.close()
