"""IEC 62056-21 framing and data sets, byte by byte."""

from __future__ import annotations

import pytest

from utilitarian.amr.errors import MeterProtocolError, MeterUnsupported
from utilitarian.amr.protocols import iec_frames as f
from utilitarian.amr.protocols.iec_datasets import (DataSet, DataValue, parse_data_block,
                                                    parse_data_lines, parse_readout)
from utilitarian.amr.protocols.lis200 import (ArchiveColumns, archive_readings, check_lis_answer,
                                              lis_error_code, parse_lis_time)


def test_request_and_option_select_bytes():
    assert f.build_request("12345678") == b"/?12345678!\r\n"
    assert f.build_request(None) == b"/?!\r\n"
    assert f.build_option_select("5", "0") == b"\x06050\r\n"
    assert f.build_option_select("0", "1") == b"\x06001\r\n"


def test_command_bytes_with_bcc():
    # BCC = XOR of everything after SOH up to and including ETX.
    assert f.build_command("B0") == b"\x01B0\x03" + bytes([ord("B") ^ ord("0") ^ 0x03])
    p1 = f.build_command("P1", b"(00000000)")
    assert p1[:4] == b"\x01P1\x02" and p1[-2] == 0x03
    assert p1[-1] == f.bcc(p1[1:-1])
    assert f.build_command("R1", b"1.8.0()") == b"\x01R1\x021.8.0()\x03" + bytes([f.bcc(b"R1\x021.8.0()\x03")])
    assert f.build_block(b"(1)", final=False) == b"\x02(1)\x04" + bytes([f.bcc(b"(1)\x04")])


@pytest.mark.parametrize("line,manufacturer,baud,enhanced,ident,reaction", [
    (b"ISk5MT174-0001\r", "ISk", 9600, "", "MT174-0001", 0.02),
    (b"LGZ4ZMD3104407.B32\r", "LGZ", 4800, "", "ZMD3104407.B32", 0.2),
    (b"EMH5\\2LZQJL0014F\r", "EMH", 9600, "2", "LZQJL0014F", 0.2),
    (b"Els6\\@\\2EK260", "Els", 19200, "@2", "EK260", 0.02),
    (b"ABC0", "ABC", 300, "", "", 0.2),
])
def test_identification_with_and_without_enhanced_capability(line, manufacturer, baud, enhanced,
                                                             ident, reaction):
    parsed = f.parse_identification_line(line)
    assert (parsed.manufacturer, parsed.baudrate, parsed.enhanced, parsed.ident) == \
        (manufacturer, baud, enhanced, ident)
    assert parsed.reaction_time == reaction


@pytest.mark.parametrize("line,error", [
    (b"AB5X", MeterProtocolError), (b"1BC5X", MeterProtocolError), (b"ABCZX", MeterProtocolError),
    (b"ABCE meter", MeterUnsupported), (b"AB\xff5", MeterProtocolError), (b"ABC", MeterProtocolError),
])
def test_bad_identifications(line, error):
    with pytest.raises(error):
        f.parse_identification_line(line)


def test_identification_after_garbage_and_echo():
    extract = f.IdentificationExtractor()
    buf = bytearray(b"\x00\x00CONNECT 9600\r\n/?12345678!\r\n/ISk5MT174\r\nrest")
    consumed, ident = extract(buf)
    assert ident.manufacturer == "ISk" and buf[consumed:] == b"rest"
    assert extract(bytearray(b"noise /ISk5MT1")) is None            # incomplete: need more
    half = f.IdentificationExtractor()
    assert half(bytearray(b"/AB\r\n/XYZ5ok\r\n"))[1].manufacturer == "XYZ"
    assert half.rejected is not None                                # "/AB" was remembered
    with pytest.raises(MeterProtocolError):
        f.IdentificationExtractor()(bytearray(b"x" * (f.MAX_NOISE + 2)))


def test_extract_frame_kinds():
    good = f.build_block(b"1.8.0(1*kWh)\r\n!\r\n")
    consumed, frame = f.extract_frame(bytearray(b"\r\n" + good + b"tail"))
    assert consumed == len(good) + 2 and frame.bcc_ok and frame.final and frame.command == ""
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert f.extract_frame(bytearray(bad))[1].bcc_ok is False
    assert f.extract_frame(bytearray(good[:-1])) is None                  # BCC not yet received
    assert f.extract_frame(bytearray(b"\x06"))[1].kind == "ack"
    assert f.extract_frame(bytearray(b"\x15"))[1].kind == "nak"
    p0 = f.build_command("P0", b"(12345678)")
    frame = f.extract_frame(bytearray(p0))[1]
    assert (frame.command, frame.payload) == ("P0", b"(12345678)")
    assert f.extract_frame(bytearray(f.build_command("B0")))[1].command == "B0"
    partial = f.extract_frame(bytearray(f.build_block(b"(1)", final=False)))[1]
    assert not partial.final
    with pytest.raises(MeterProtocolError):
        f.extract_frame(bytearray(b"\x01\x02x\x03\x00"))


def test_data_sets_keep_obis_ids_values_and_units():
    block = (b"0.0.0(12345678)\r\nF.F(00000000)\r\nC.1.0(1234)\r\n1.8.0(0012345.678*kWh)\r\n"
             b"1-0:1.8.0*255(0012345.678*kWh)\r\n1.6.0(0001.234*kW)(23-01-05 12:15)\r\n"
             b"1.8.1(0000001.1*kWh)1.8.2(0000002.2*kWh)\r\n")
    sets = parse_data_block(block)
    by_address = {s.address: s for s in sets}
    assert list(by_address) == ["0.0.0", "F.F", "C.1.0", "1.8.0", "1-0:1.8.0*255", "1.6.0", "1.8.1",
                                "1.8.2"]
    assert by_address["1.8.0"].value == DataValue("0012345.678", "kWh")
    assert by_address["1.8.0"].value.number == "12345.678"
    assert by_address["1.6.0"].values == (DataValue("0001.234", "kW"), DataValue("23-01-05 12:15"))
    assert by_address["1.6.0"].values[1].number is None
    assert by_address["F.F"].value.unit is None


def test_readout_end_marker_and_malformed_lines():
    assert parse_readout(b"1.8.0(1*kWh)\r\n!\r\n") == (DataSet("1.8.0", (DataValue("1", "kWh"),)),)
    with pytest.raises(MeterProtocolError, match="'!'"):
        parse_readout(b"1.8.0(1*kWh)\r\n")
    for bad in (b"1.8.0(1*kWh\r\n", b"1.8.0 1\r\n", b"1.8.0((1))\r\n", b"1.8.0(1*k*Wh)\r\n",
                b"1.8.0(\x07)\r\n", b"1.8.0(\xc3\xa9)\r\n", b"a)b(1)\r\n", b"x" * 40 + b"(1)\r\n"):
        with pytest.raises(MeterProtocolError):
            parse_data_block(bad)


def test_value_only_lines_are_rows():
    lines = parse_data_lines(b"(1)(2)(2024-01-05,12:00:00)\r\n(3)(4)(2024-01-05,13:00:00)\r\n")
    assert [[v.raw for s in line for v in s.values] for line in lines][1] == \
        ["3", "4", "2024-01-05,13:00:00"]


def test_lis200_errors_and_archive_rows():
    from zoneinfo import ZoneInfo
    assert lis_error_code("#0017") == 17 and lis_error_code("17") is None
    with pytest.raises(Exception) as info:
        check_lis_answer("#0019", "W1 1:400.0")
    assert info.value.kind == "authentication" and "#0019" in str(info.value)
    check_lis_answer("1234.5", "R1")  # a value is not an error
    tz = ZoneInfo("Europe/Stockholm")
    assert parse_lis_time("2024-07-01,12:00:00", tz).hour == 10   # CEST = UTC+2
    columns = ArchiveColumns(("0:1", "1:400", "2:300", "3:20"), (None, None, "m3", None))
    rows = [(DataValue("1"), DataValue("2024-01-05,12:00:00"), DataValue("100.5"), DataValue("AB12")),
            (DataValue("2"), DataValue("garbage"), DataValue("101.5"), DataValue("CD34")),
            (DataValue("3"), DataValue("2024-01-05,14:00:00"))]
    data = archive_readings(rows, columns, control_position=2, tz=tz)
    assert (data.rows, data.skipped_rows) == (3, 2)
    (reading,) = data.readings
    assert (reading.series, reading.value, reading.unit, reading.timestamp.hour) == ("2:300", "100.5", "m3", 11)
    named = archive_readings(rows[:1], columns, control_position=2, tz=tz,
                             series={"2:300": "volume_base", "0:1": "order"})
    assert sorted(r.series for r in named.readings) == ["order", "volume_base"]
