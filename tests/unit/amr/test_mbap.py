"""Our MBAP codec against pymodbus's own framer (the bytes its client sends and its server answers),
plus what it does with answers pymodbus's server never sends: a late answer to an earlier try,
another unit, an exception answer, a short or bad frame. (Reads over sockets against pymodbus's
real server: tests/integration/amr/test_amr_modbus.py and test_modbus_pool.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import (ReadHoldingRegistersRequest, ReadHoldingRegistersResponse,
                                           ReadInputRegistersRequest, ReadInputRegistersResponse)

from utilitarian import steps
from utilitarian.amr.protocols import mbap

REQUESTS = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}
RESPONSES = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse}


@given(tid=st.integers(0, 0xFFFF), unit=st.integers(0, 255), function=st.sampled_from([3, 4]),
       address=st.integers(0, 0xFFFF), count=st.integers(1, 125))
def test_requests_are_pymodbus_bytes(tid, unit, function, address, count):
    pdu = REQUESTS[function](address=address, count=count, dev_id=unit, transaction_id=tid)
    assert mbap.read_request(tid, unit, function, address, count) == FramerSocket(DecodePDU(False)).buildFrame(pdu)


@given(tid=st.integers(0, 0xFFFF), unit=st.integers(0, 255), function=st.sampled_from([3, 4]),
       registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125), tail=st.binary(max_size=8))
def test_pymodbus_answers_decode_to_their_registers(tid, unit, function, registers, tail):
    frame = FramerSocket(DecodePDU(True)).buildFrame(
        RESPONSES[function](registers=registers, dev_id=unit, transaction_id=tid))
    got_tid, got_unit, pdu, rest = mbap.split_frame(frame + tail)
    assert (got_tid, got_unit, rest) == (tid, unit, tail)
    assert mbap.parse_read_response(pdu, function, len(registers)) == registers


def test_incomplete_frames_wait_and_impossible_headers_are_garbled():
    frame = mbap.read_request(1, 1, 3, 0, 2)
    assert all(mbap.split_frame(frame[:n]) is None for n in range(len(frame)))
    with pytest.raises(mbap.Garbled):
        mbap.split_frame(b"\x00\x01\x00\x07\x00\x06\x01\x03")  # protocol id 7
    with pytest.raises(mbap.Garbled):
        mbap.split_frame(b"\x00\x01\x00\x00\x01\x00\x01\x03")  # length 256


def test_exception_and_mismatched_answers():
    with pytest.raises(mbap.ExceptionAnswer) as exc:
        mbap.parse_read_response(b"\x84\x02", 4, 2)
    assert exc.value.code == 2
    for pdu in (b"\x03\x04\x00\x01\x00\x02", b"\x04\x02\x00\x01", b"\x04\x04\x00\x01\x00", b"\x04"):
        with pytest.raises(mbap.MalformedAnswer):
            mbap.parse_read_response(pdu, 4, 2)


class FakeSocket:
    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.sent = []

    def sendall(self, data):
        self.sent.append(data)

    def settimeout(self, seconds):
        pass

    def setsockopt(self, level, option, value):
        pass

    def recv(self, size, flags=0):
        return self.chunks.pop(0) if self.chunks else b""


def connection(chunks):
    from utilitarian.amr.target import parse_meter_url

    conn = mbap.MbapConnection(parse_meter_url("modbus+tcp://127.0.0.1:1502?device_id=9&type=eastron_sdm120"), None)
    conn.sock = FakeSocket(chunks)
    return conn


def read(conn, *request):
    """Drive read_steps as the worker's wait loop would, the fake socket being always readable."""
    reading, value = conn.read_steps(*request), None
    while True:
        try:
            wait = reading.send(value)
        except StopIteration as stop:
            return stop.value
        assert isinstance(wait, steps.Readable) and wait.fd == conn.fd
        value = True


def test_a_late_answer_to_an_earlier_try_is_skipped_and_split_reads_are_joined():
    late = FramerSocket(DecodePDU(True)).buildFrame(ReadInputRegistersResponse(registers=[7, 7], dev_id=9,
                                                                              transaction_id=0))
    ours = FramerSocket(DecodePDU(True)).buildFrame(ReadInputRegistersResponse(registers=[1, 2], dev_id=9,
                                                                              transaction_id=1))
    conn = connection([late + ours[:5], ours[5:]])
    assert read(conn, 4, 0, 2, 9) == [1, 2] and conn.received


def test_another_unit_answering_is_garbled_and_a_hang_up_is_a_lost_connection():
    other = FramerSocket(DecodePDU(True)).buildFrame(ReadInputRegistersResponse(registers=[1, 2], dev_id=8,
                                                                               transaction_id=1))
    with pytest.raises(mbap.Garbled):
        read(connection([other]), 4, 0, 2, 9)
    with pytest.raises(mbap.ConnectionLost):
        read(connection([]), 4, 0, 2, 9)


def test_a_pooled_connection_looks_alive_only_while_its_gateway_is_quiet_and_connected():
    # A real TCP peer: idle and connected is alive; bytes nobody asked for, or the gateway's FIN
    # while idle, are not (the next request must not go out on it).
    import socket as socket_module

    from utilitarian.amr.target import parse_meter_url

    server = socket_module.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        for fault in ("late bytes", "closed"):
            conn = mbap.MbapConnection(parse_meter_url(f"modbus+tcp://127.0.0.1:{port}?device_id=1"), ("127.0.0.1", port))
            conn.connect()
            peer, _ = server.accept()
            try:
                assert conn.looks_alive() and conn.looks_alive()
                if fault == "late bytes":
                    peer.sendall(b"\x00\x07")
                else:
                    peer.close()
                for _ in range(200):  # the bytes or the FIN cross the loopback
                    if not conn.looks_alive():
                        break
                    steps.block(steps.pause(0.005))
                assert not conn.looks_alive(), fault
            finally:
                peer.close()
                conn.close()
            assert not conn.looks_alive()
    finally:
        server.close()


def test_a_connection_lives_above_the_descriptors_select_can_take_and_still_reads():
    # pymodbus's select() needs descriptors below 1024: ours move up where the limit allows, and
    # the moved socket is the same connection (a request and its answer cross it).
    import resource
    import socket as socket_module

    from utilitarian.amr.target import parse_meter_url

    server = socket_module.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    conn = mbap.MbapConnection(parse_meter_url(f"modbus+tcp://127.0.0.1:{port}?device_id=9"), ("127.0.0.1", port))
    try:
        conn.connect()
        peer, _ = server.accept()
        high = resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 2 * mbap.FD_SETSIZE
        assert (conn.fd >= mbap.FD_SETSIZE) is high and conn.low_fd is not high
        assert conn.sock.gettimeout() is None and conn.looks_alive()
        answer = FramerSocket(DecodePDU(True)).buildFrame(ReadInputRegistersResponse(registers=[5, 6], dev_id=9,
                                                                                    transaction_id=1))
        peer.sendall(answer)
        assert conn.read(4, 0, 2, 9) == [5, 6]
        assert peer.recv(64) == mbap.read_request(1, 9, 4, 0, 2)
        peer.close()
    finally:
        conn.close()
        server.close()
