"""DLMS/COSEM codec: known answers from the standards, round trips, and Hypothesis on every parser
(A-XDR data, HDLC frames, wrapper PDUs, AARE, Get/Set/Action responses): any bytes end in a value or
a typed MeterError, never another exception, never a hang."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from utilitarian.amr.errors import MeterAuthenticationError, MeterError
from utilitarian.amr.protocols import dlms_apdu as a
from utilitarian.amr.protocols import dlms_axdr as x
from utilitarian.amr.protocols import dlms_hdlc as h
from utilitarian.amr.protocols.dlms_link import extract_wrapper
from utilitarian.amr.protocols.dlms_security import DlmsKeys, decrypt, encrypt, gmac, load_keys

FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
GREEN_BOOK_KEYS = DlmsKeys(authentication_key=bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"),
                           encryption_key=bytes.fromhex("000102030405060708090A0B0C0D0E0F"))
GREEN_BOOK_TITLE = bytes.fromhex("4D4D4D0000BC614E")


def test_aes_gcm_matches_the_green_book_example():
    # DLMS UA 1000-2 (Green Book) worked example: a get-request ciphered with security suite 0.
    plain = bytes.fromhex("C0010000080000010000FF0200")
    sealed = encrypt(plain, system_title=GREEN_BOOK_TITLE, invocation_counter=0x01234567, keys=GREEN_BOOK_KEYS)
    assert sealed.hex().upper() == "411312FF935A47566827C467BC" "7D825C3BE4A77C3FCC056B6B"
    assert decrypt(sealed, system_title=GREEN_BOOK_TITLE, invocation_counter=0x01234567,
                   keys=GREEN_BOOK_KEYS) == plain


def test_a_wrong_key_or_counter_is_an_authentication_error():
    sealed = encrypt(b"\xC0\x01", system_title=GREEN_BOOK_TITLE, invocation_counter=7, keys=GREEN_BOOK_KEYS)
    other = DlmsKeys(GREEN_BOOK_KEYS.authentication_key, bytes(16))
    for keys, counter in ((other, 7), (GREEN_BOOK_KEYS, 8)):
        with pytest.raises(MeterAuthenticationError):
            decrypt(sealed, system_title=GREEN_BOOK_TITLE, invocation_counter=counter, keys=keys)


def test_gmac_answer_layout():
    answer = gmac(b"challenge-bytes!", system_title=GREEN_BOOK_TITLE, invocation_counter=5, keys=GREEN_BOOK_KEYS)
    assert answer[:5] == b"\x10\x00\x00\x00\x05" and len(answer) == 17


def test_crc16_check_value():
    assert h.crc16(b"123456789") == 0x906E   # CRC-16/X.25 catalogue check value


def test_key_files_never_show_keys(tmp_path):
    path = tmp_path / "meter.keys"
    path.write_text('authentication_key = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"\n'
                    'encryption_key = "000102030405060708090A0B0C0D0E0F"\n[other]\npassword = "pw"\n')
    keys = load_keys(str(path))
    assert keys.encryption_key == GREEN_BOOK_KEYS.encryption_key
    assert "0001020304" not in repr(keys) and "D0D1" not in repr(keys)
    assert load_keys(str(path), "other").password == b"pw"
    path.write_text('encryption_key = "0001020304050607080900"\n')
    with pytest.raises(MeterError) as info:
        load_keys(str(path))
    assert "000102" not in str(info.value) and "16 bytes" in str(info.value)
    path.write_text('encryption_key = 000102030405060708090A0B0C0D0E0F\n')   # not TOML: no echo of the line
    with pytest.raises(MeterError) as info:
        load_keys(str(path))
    assert "0001" not in str(info.value)


# -- A-XDR ------------------------------------------------------------------------------------

def test_truncated_data_is_an_error_not_a_hang():
    # dlms-cosem 25.1 loops forever on each of these (a truncated octet string, structure, array)
    for raw in ("090c07e5", "0102", "01010202060000"):
        with pytest.raises(x.DlmsDecodeError):
            x.decode_data(bytes.fromhex(raw))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.binary(max_size=300),
                    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


@FAST
@given(VALUES)
def test_axdr_round_trip(value):
    assert x.decode_data(x.encode_data(value)) == value


@FAST
@given(VALUES, st.data())
def test_every_truncation_of_valid_data_is_a_decode_error(value, data):
    raw = x.encode_data(value)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(x.DlmsDecodeError):
        x.decode_data(raw[:cut])


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_a_decode_error(raw):
    try:
        x.decode_data(raw)
    except x.DlmsDecodeError:
        pass


@FAST
@given(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 12, 31),
                    timezones=st.sampled_from([ZoneInfo("Europe/Stockholm"), ZoneInfo("UTC"),
                                               ZoneInfo("America/New_York")])))
def test_date_time_round_trip(moment):
    moment = moment.replace(microsecond=moment.microsecond // 10000 * 10000)
    # wall-clock times inside a DST gap name no instant
    assume(moment.astimezone(timezone.utc).astimezone(moment.tzinfo).replace(tzinfo=None) == moment.replace(tzinfo=None))
    decoded = x.decode_datetime(x.encode_datetime(moment), ZoneInfo("UTC"))
    # compare instants: Python never calls two aware times in a DST fold equal across zones
    assert decoded.timestamp() == moment.timestamp()


def test_date_time_deviation_is_utc_minus_local():
    raw = x.encode_datetime(datetime(2026, 1, 15, 12, 0, tzinfo=ZoneInfo("Europe/Stockholm")))
    assert int.from_bytes(raw[9:11], "big", signed=True) == -60 and raw[11] == 0
    summer = x.encode_datetime(datetime(2026, 7, 15, 12, 0, tzinfo=ZoneInfo("Europe/Stockholm")))
    assert int.from_bytes(summer[9:11], "big", signed=True) == -120 and summer[11] == 0x80
    unspecified = raw[:9] + b"\x80\x00" + raw[11:]
    assert x.decode_datetime(unspecified, ZoneInfo("UTC")) == datetime(2026, 1, 15, 12, tzinfo=timezone.utc)
    with pytest.raises(x.DlmsDecodeError):
        x.decode_datetime(b"\xff\xff" + raw[2:], ZoneInfo("UTC"))


def test_obis_forms():
    assert x.parse_obis("1-0:1.8.0*255") == x.parse_obis("1-0:1.8.0") == bytes([1, 0, 1, 8, 0, 255])
    assert x.parse_obis("0.0.1.0.0.255") == bytes([0, 0, 1, 0, 0, 255])
    assert x.short_obis(bytes([1, 0, 1, 8, 0, 255])) == "1-0:1.8.0"
    assert x.format_obis(bytes([1, 0, 99, 1, 0, 1])) == "1-0:99.1.0*1"
    for bad in ("1.8.0", "1-0:1.8.300", "nonsense"):
        with pytest.raises(ValueError):
            x.parse_obis(bad)


# -- HDLC and the wrapper -----------------------------------------------------------------------

ADDRESSES = st.tuples(st.integers(1, 16383), st.one_of(st.none(), st.integers(0, 16383)), st.integers(1, 127))


@FAST
@given(ADDRESSES, st.integers(0, 255), st.binary(max_size=300), st.booleans(), st.binary(max_size=5))
def test_hdlc_frame_round_trip(addresses, control, info, segmented, noise):
    logical, physical, client = addresses
    dest, src = h.server_address(logical, physical), h.client_address(client)
    raw = h.build_frame(dest, src, control, info, segmented)
    buffer = bytearray(noise.replace(b"\x7e", b"") + raw + b"\x7e")
    consumed, frame = h.extract_frame(buffer)
    assert (frame.destination, frame.source, frame.control, frame.info, frame.segmented) == \
        (dest, src, control, info, segmented)
    assert consumed == len(buffer) - 1   # the closing flag may open the next frame


@FAST
@given(st.binary(max_size=600))
def test_hdlc_extract_never_raises_untyped(raw):
    try:
        h.extract_frame(bytearray(raw))
    except MeterError:
        pass


def test_hdlc_corruption_is_a_checksum_error():
    raw = bytearray(h.build_frame(h.server_address(1, 17), h.client_address(16), 0x10, b"\xE6\xE7\x00abc"))
    raw[-4] ^= 0x01
    with pytest.raises(MeterError) as info:
        h.extract_frame(raw)
    assert info.value.kind == "checksum"


@FAST
@given(st.binary(max_size=100))
def test_wrapper_extract(raw):
    try:
        result = extract_wrapper(bytearray(raw))
    except MeterError:
        return
    if result is not None:
        assert result[0] == 8 + len(result[1][2])


# -- APDUs ------------------------------------------------------------------------------------

@FAST
@given(st.binary(max_size=200))
def test_apdu_parsers_never_raise_untyped(raw):
    for parse in (a.parse_aare, a.parse_initiate_response, a.open_glo_envelope,
                  lambda r: a.parse_get_response(r, "x"), lambda r: a.parse_set_response(r, "x"),
                  lambda r: a.parse_action_response(r, "x")):
        try:
            parse(raw)
        except MeterError:
            pass


def test_get_response_with_data_access_error_names_the_reason():
    with pytest.raises(a.DataAccessError) as info:
        a.parse_get_response(bytes([0xC4, 0x01, 0xC1, 0x01, 0x04]), "1-0:99.9.9")
    assert info.value.message == "1-0:99.9.9: object undefined" and info.value.kind == "unsupported"


def test_aarq_carries_mechanism_and_title():
    aarq = a.build_aarq(mechanism=a.MECHANISM_HLS_GMAC, ciphered=True, system_title=b"UTL00001",
                        auth_value=b"c" * 16, user_information=b"\x21\x01\x00")
    assert aarq[0] == 0x60 and b"\x60\x85\x74\x05\x08\x01\x03" in aarq and b"\x60\x85\x74\x05\x08\x02\x05" in aarq
    assert b"UTL00001" in aarq and aarq[1] == len(aarq) - 2
