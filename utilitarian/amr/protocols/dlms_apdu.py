"""DLMS/COSEM application layer APDUs a polling client needs (IEC 62056-5-3, LN referencing):
AARQ/AARE and RLRQ/RLRE (BER), Get/Set/Action requests and responses, exception and confirmed
service errors, and the service-specific global ciphering (glo-*) envelopes.

Builders are pure; parsers take whole APDUs and raise only DlmsDecodeError or typed meter errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from utilitarian.amr.errors import MeterAuthenticationError, MeterProtocolError, MeterUnsupported
from utilitarian.amr.protocols.dlms_axdr import DlmsDecodeError, Reader, encode_length, read_data

# Application context names 2.16.756.5.8.1.{1,3} (LN, without / with ciphering) and mechanism
# names 2.16.756.5.8.2.{m} share this BER prefix: 60 85 74 05 08.
_OID_PREFIX = bytes([0x60, 0x85, 0x74, 0x05, 0x08])
CONTEXT_LN, CONTEXT_LN_CIPHERED = 1, 3
MECHANISM_NONE, MECHANISM_LLS, MECHANISM_HLS_GMAC = 0, 1, 5

# xDLMS tags
INITIATE_REQUEST, INITIATE_RESPONSE, CONFIRMED_SERVICE_ERROR = 0x01, 0x08, 0x0E
GLO_INITIATE_REQUEST, GLO_INITIATE_RESPONSE = 0x21, 0x28
GET_REQUEST, SET_REQUEST, ACTION_REQUEST = 0xC0, 0xC1, 0xC3
GET_RESPONSE, SET_RESPONSE, ACTION_RESPONSE = 0xC4, 0xC5, 0xC7
GLO = {GET_REQUEST: 0xC8, SET_REQUEST: 0xC9, ACTION_REQUEST: 0xCB,
       GET_RESPONSE: 0xCC, SET_RESPONSE: 0xCD, ACTION_RESPONSE: 0xCF}
UNGLO = {v: k for k, v in GLO.items()}
EXCEPTION_RESPONSE = 0xD8
AARQ, AARE, RLRQ, RLRE = 0x60, 0x61, 0x62, 0x63

# Conformance block (bit 0 is the leftmost of 24): get, set, action, selective access,
# block transfer with get, multiple references off. 0x00181D: bits 11, 12, 19, 20, 22, 23.
CONFORMANCE = bytes([0x00, 0x18, 0x1D])
DAR = {1: "hardware fault", 2: "temporary failure", 3: "read-write denied", 4: "object undefined",
       9: "object class inconsistent", 11: "object unavailable", 12: "type unmatched",
       13: "scope of access violated", 14: "data block unavailable", 15: "long get aborted",
       16: "no long get in progress", 250: "other reason"}
ACTION_RESULT = {0: "success", 1: "hardware fault", 2: "temporary failure", 3: "read-write denied",
                 4: "object undefined", 9: "object class inconsistent", 11: "object unavailable",
                 12: "type unmatched", 13: "scope of access violated", 14: "data block unavailable",
                 250: "other reason"}
INVOKE_ID = 0xC1  # invoke id 1, confirmed, high priority


class DataAccessError(MeterUnsupported):
    """The meter refused one attribute (object undefined, access denied, ...)."""

    def __init__(self, what: str, code: int):
        self.code = code
        super().__init__(f"{what}: {DAR.get(code, f'data access result {code}')}")


def _ber(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(body)) + body


def initiate_request(max_pdu: int) -> bytes:
    # dedicated-key absent, response-allowed default, no quality of service, DLMS version 6
    return (bytes([INITIATE_REQUEST, 0x00, 0x00, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00]) + CONFORMANCE
            + max_pdu.to_bytes(2, "big"))


def build_aarq(*, mechanism: int, ciphered: bool, system_title: bytes,
               auth_value: bytes | None, user_information: bytes) -> bytes:
    body = _ber(0xA1, _ber(0x06, _OID_PREFIX + bytes([0x01, CONTEXT_LN_CIPHERED if ciphered else CONTEXT_LN])))
    if ciphered:
        body += _ber(0xA6, _ber(0x04, system_title))
    if mechanism != MECHANISM_NONE:
        body += bytes([0x8A, 0x02, 0x07, 0x80])                       # acse requirements: authentication
        body += _ber(0x8B, _OID_PREFIX + bytes([0x02, mechanism]))    # mechanism name
        body += _ber(0xAC, _ber(0x80, auth_value or b""))             # calling authentication value
    body += _ber(0xBE, _ber(0x04, user_information))
    return _ber(AARQ, body)


@dataclass(frozen=True)
class Aare:
    result: int                       # 0 accepted, 1 rejected permanent, 2 rejected transient
    diagnostic: int | None
    context: int | None
    system_title: bytes | None        # the meter's (ciphered contexts)
    mechanism: int | None
    challenge: bytes | None           # server-to-client challenge (HLS)
    user_information: bytes | None    # InitiateResponse, glo-InitiateResponse or ConfirmedServiceError


def _tlv(reader: Reader) -> tuple[int, bytes]:
    tag = reader.byte("BER tag")
    return tag, reader.take(reader.length("BER length"), "BER value")


def parse_aare(apdu: bytes) -> Aare:
    reader = Reader(apdu)
    tag, body = _tlv(reader)
    if tag != AARE:
        raise DlmsDecodeError(f"expected an AARE (0x61), got tag 0x{tag:02x}")
    fields: dict[int, bytes] = {}
    inner = Reader(body)
    while inner.left:
        t, v = _tlv(inner)
        fields[t] = v
    if 0xA2 not in fields:
        raise DlmsDecodeError("AARE without a result")

    def inner_value(raw: bytes, what: str) -> bytes:
        return _tlv(Reader(raw))[1] if raw else b""

    result_raw = inner_value(fields[0xA2], "result")
    if len(result_raw) != 1:
        raise DlmsDecodeError("AARE result is not one integer octet")
    diagnostic = None
    if 0xA3 in fields:  # [3] { acse-service-user [1] INTEGER | acse-service-provider [2] INTEGER }
        choice = inner_value(fields[0xA3], "diagnostic")
        diagnostic = choice[-1] if choice else None
    context = None
    if 0xA1 in fields:
        oid = inner_value(fields[0xA1], "context")
        context = oid[-1] if oid[:5] == _OID_PREFIX else None
    mechanism = None
    if 0x89 in fields:
        mechanism = fields[0x89][-1] if fields[0x89][:5] == _OID_PREFIX else None
    title = inner_value(fields[0xA4], "responding AP title") if 0xA4 in fields else None
    challenge = inner_value(fields[0xAA], "responding authentication value") if 0xAA in fields else None
    user = inner_value(fields[0xBE], "user information") if 0xBE in fields else None
    return Aare(result_raw[0], diagnostic, context, title, mechanism, challenge, user)


def parse_initiate_response(data: bytes) -> int:
    """The server's max receive PDU size, after checking it is an InitiateResponse for DLMS 6."""
    reader = Reader(data)
    tag = reader.byte("InitiateResponse")
    if tag == CONFIRMED_SERVICE_ERROR:
        raise MeterUnsupported(f"the meter refused the association: confirmed service error "
                               f"{reader.data[1:].hex()}")
    if tag != INITIATE_RESPONSE:
        raise DlmsDecodeError(f"expected an InitiateResponse (0x08), got 0x{tag:02x}")
    if reader.byte("quality of service") != 0:     # negotiated-quality-of-service present
        reader.byte("quality of service")
    version = reader.byte("DLMS version")
    if version != 6:
        raise MeterUnsupported(f"the meter speaks DLMS version {version}, not 6")
    if reader.take(4, "conformance")[:3] != b"\x5F\x1F\x04":
        raise DlmsDecodeError("InitiateResponse conformance block is malformed")
    reader.take(3, "conformance")
    return int.from_bytes(reader.take(2, "max PDU size"), "big")


def build_rlrq() -> bytes:
    return bytes([RLRQ, 0x03, 0x80, 0x01, 0x00])   # reason: normal


# -- xDLMS services ---------------------------------------------------------------------------

def _descriptor(class_id: int, obis: bytes, index: int) -> bytes:
    return class_id.to_bytes(2, "big") + obis + bytes([index])


def get_request(class_id: int, obis: bytes, attribute: int, access: bytes | None = None) -> bytes:
    selection = b"\x00" if access is None else b"\x01" + access   # access: selector + data
    return bytes([GET_REQUEST, 0x01, INVOKE_ID]) + _descriptor(class_id, obis, attribute) + selection


def get_request_next(block: int) -> bytes:
    return bytes([GET_REQUEST, 0x02, INVOKE_ID]) + block.to_bytes(4, "big")


def set_request(class_id: int, obis: bytes, attribute: int, data: bytes) -> bytes:
    return bytes([SET_REQUEST, 0x01, INVOKE_ID]) + _descriptor(class_id, obis, attribute) + b"\x00" + data


def action_request(class_id: int, obis: bytes, method: int, data: bytes | None) -> bytes:
    params = b"\x00" if data is None else b"\x01" + data
    return bytes([ACTION_REQUEST, 0x01, INVOKE_ID]) + _descriptor(class_id, obis, method) + params


@dataclass(frozen=True)
class GetResult:
    data: bytes | None        # encoded Data of a normal response, or this block's raw data
    last: bool = True
    block: int | None = None  # block number of a datablock response


def _check_service(apdu: bytes, tag: int, what: str) -> Reader:
    if not apdu:
        raise DlmsDecodeError(f"empty answer to {what}")
    if apdu[0] == EXCEPTION_RESPONSE:
        state = apdu[1] if len(apdu) > 1 else None
        service = apdu[2] if len(apdu) > 2 else None
        raise MeterProtocolError(f"{what}: the meter answered with an exception response "
                                 f"(state error {state}, service error {service})")
    if apdu[0] == CONFIRMED_SERVICE_ERROR:
        raise MeterUnsupported(f"{what}: confirmed service error {apdu[1:4].hex()}")
    reader = Reader(apdu)
    got = reader.byte()
    if got != tag:
        raise DlmsDecodeError(f"{what}: expected APDU 0x{tag:02x}, got 0x{got:02x}")
    return reader


def parse_get_response(apdu: bytes, what: str) -> GetResult:
    reader = _check_service(apdu, GET_RESPONSE, what)
    kind = reader.byte("response type")
    reader.byte("invoke id")
    if kind == 0x01:
        if reader.byte("result choice") == 0x01:
            raise DataAccessError(what, reader.byte("data access result"))
        start = reader.pos
        read_data(reader)               # validates the value and its length
        if reader.left:
            raise DlmsDecodeError(f"{what}: {reader.left} byte(s) after the value")
        return GetResult(reader.data[start:])
    if kind == 0x02:
        last = reader.byte("last block") != 0
        block = int.from_bytes(reader.take(4, "block number"), "big")
        if reader.byte("result choice") == 0x01:
            raise DataAccessError(what, reader.byte("data access result"))
        raw = reader.take(reader.length("raw data length"), "raw data")
        if reader.left:
            raise DlmsDecodeError(f"{what}: {reader.left} byte(s) after the data block")
        return GetResult(raw, last, block)
    raise DlmsDecodeError(f"{what}: unsupported get-response type {kind}")


def parse_set_response(apdu: bytes, what: str) -> None:
    reader = _check_service(apdu, SET_RESPONSE, what)
    if reader.byte("response type") != 0x01:
        raise DlmsDecodeError(f"{what}: unsupported set-response type")
    reader.byte("invoke id")
    code = reader.byte("data access result")
    if code != 0:
        raise DataAccessError(what, code)


def parse_action_response(apdu: bytes, what: str) -> bytes | None:
    """The returned Data (encoded), or None."""
    reader = _check_service(apdu, ACTION_RESPONSE, what)
    if reader.byte("response type") != 0x01:
        raise DlmsDecodeError(f"{what}: unsupported action-response type")
    reader.byte("invoke id")
    result = reader.byte("action result")
    if result != 0:
        raise MeterAuthenticationError(f"{what}: {ACTION_RESULT.get(result, f'action result {result}')}") \
            if result in (3, 13) else MeterUnsupported(f"{what}: {ACTION_RESULT.get(result, result)}")
    if not reader.left or reader.byte("return parameters") == 0:
        return None
    if reader.byte("get-data-result") == 0x01:
        raise DataAccessError(what, reader.byte("data access result"))
    start = reader.pos
    read_data(reader)
    return reader.data[start:reader.pos]


# -- global ciphering envelopes -----------------------------------------------------------------

def glo_envelope(tag: int, security_control: int, invocation_counter: int, ciphertext: bytes) -> bytes:
    body = bytes([security_control]) + invocation_counter.to_bytes(4, "big") + ciphertext
    return bytes([tag]) + encode_length(len(body)) + body


def open_glo_envelope(apdu: bytes) -> tuple[int, int, int, bytes]:
    """(plain tag, security control, invocation counter, ciphertext+tag) of a glo-* APDU."""
    reader = Reader(apdu)
    tag = reader.byte("ciphered APDU tag")
    body = reader.take(reader.length("ciphered APDU length"), "ciphered APDU")
    if reader.left:
        raise DlmsDecodeError(f"{reader.left} byte(s) after a ciphered APDU")
    if len(body) < 5:
        raise DlmsDecodeError("ciphered APDU without security header")
    plain_tag = UNGLO.get(tag, GLO_INITIATE_RESPONSE if tag == GLO_INITIATE_RESPONSE else None)
    if plain_tag is None:
        raise DlmsDecodeError(f"unexpected APDU 0x{tag:02x} where a ciphered one belongs")
    return plain_tag, body[0], int.from_bytes(body[1:5], "big"), body[5:]
