"""HDLC frames of the DLMS/COSEM serial profile (IEC 62056-46, frame format type 3): addresses,
control field, header and frame check sequences (CRC-16/X.25), and the pure extractor that finds
one frame in a receive buffer.

No byte stuffing: the frame length field delimits frames, as the standard says.
"""

from __future__ import annotations

from dataclasses import dataclass

from utilitarian.amr.errors import MeterChecksumError
from utilitarian.amr.protocols.dlms_axdr import DlmsDecodeError

FLAG = 0x7E
SNRM, UA, DISC, DM, FRMR = 0x83, 0x63, 0x43, 0x0F, 0x87    # without the P/F bit (0x10)
PF = 0x10
LLC_REQUEST = b"\xE6\xE6\x00"
LLC_RESPONSE = b"\xE6\xE7\x00"
MAX_FRAME = 2048            # the 11-bit length field allows 2047
GARBAGE_LIMIT = 4096        # bytes before a flag that we skip before calling the line garbled


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/X.25 (reflected 0x1021, init and final xor 0xFFFF), sent least significant byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def encode_address(value: int, size: int) -> bytes:
    """An address of 1, 2 or 4 bytes without the final-byte bit (the caller sets it on the last)."""
    if size == 1:
        return bytes([(value & 0x7F) << 1])
    if size == 2:
        return bytes([((value >> 7) & 0x7F) << 1, (value & 0x7F) << 1])
    raise ValueError("address size must be 1 or 2 here")


def server_address(logical: int, physical: int | None) -> bytes:
    """Upper (logical device) and lower (physical) HDLC address; 1, 2 or 4 octets."""
    if physical is None:
        raw = encode_address(logical, 1 if logical < 0x80 else 2)
    elif logical < 0x80 and physical < 0x80:
        raw = encode_address(logical, 1) + encode_address(physical, 1)
    else:
        raw = encode_address(logical, 2) + encode_address(physical, 2)
    return raw[:-1] + bytes([raw[-1] | 1])


def client_address(sap: int) -> bytes:
    return bytes([((sap & 0x7F) << 1) | 1])


@dataclass(frozen=True)
class Frame:
    destination: bytes
    source: bytes
    control: int
    info: bytes
    segmented: bool

    @property
    def poll_final(self) -> bool:
        return bool(self.control & PF)

    @property
    def kind(self) -> str:
        c = self.control
        if c & 0x01 == 0:
            return "I"
        if c & 0x0F == 0x01:
            return "RR"
        if c & 0x0F == 0x05:
            return "RNR"
        return {SNRM: "SNRM", UA: "UA", DISC: "DISC", DM: "DM", FRMR: "FRMR"}.get(c & ~PF, "?")

    @property
    def send_sequence(self) -> int:
        return (self.control >> 1) & 0x07

    @property
    def receive_sequence(self) -> int:
        return (self.control >> 5) & 0x07


def build_frame(destination: bytes, source: bytes, control: int, info: bytes = b"",
                segmented: bool = False) -> bytes:
    length = 2 + len(destination) + len(source) + 1 + 2 + (len(info) + 2 if info else 0)
    if length >= MAX_FRAME:
        raise ValueError("HDLC frame too long")
    header = bytes([0xA0 | (0x08 if segmented else 0) | (length >> 8), length & 0xFF]) \
        + destination + source + bytes([control])
    if info:
        header += crc16(header).to_bytes(2, "little")
        body = header + info
    else:
        body = header
    return bytes([FLAG]) + body + crc16(body).to_bytes(2, "little") + bytes([FLAG])


def i_control(send_seq: int, receive_seq: int, final: bool = True) -> int:
    return ((receive_seq & 7) << 5) | (PF if final else 0) | ((send_seq & 7) << 1)


def rr_control(receive_seq: int) -> int:
    return ((receive_seq & 7) << 5) | PF | 0x01


def _split_address(data: bytes, start: int, end: int) -> int:
    """Index after an address field (its last byte has bit 0 set)."""
    for index in range(start, min(start + 4, end)):
        if data[index] & 1:
            return index + 1
    raise DlmsDecodeError("HDLC address field without an end bit")


def parse_frame(body: bytes) -> Frame:
    """One frame between its flags (format, addresses, control, HCS, info, FCS)."""
    if len(body) < 7:
        raise DlmsDecodeError("HDLC frame too short")
    if body[0] & 0xF0 != 0xA0:
        raise DlmsDecodeError(f"HDLC frame format 0x{body[0]:02x} is not type 3")
    length = ((body[0] & 0x07) << 8) | body[1]
    if length != len(body):
        raise DlmsDecodeError(f"HDLC length field {length} but {len(body)} bytes between flags")
    if crc16(body[:-2]) != int.from_bytes(body[-2:], "little"):
        raise MeterChecksumError("HDLC frame check sequence (FCS) does not match")
    after_dest = _split_address(body, 2, len(body) - 2)
    after_src = _split_address(body, after_dest, len(body) - 2)
    control_at = after_src
    if control_at >= len(body) - 2:
        raise DlmsDecodeError("HDLC frame without a control field")
    info = b""
    if len(body) > control_at + 3:       # there is an information field: HCS first
        hcs_at = control_at + 1
        if len(body) < hcs_at + 4:
            raise DlmsDecodeError("HDLC frame too short for its header check sequence")
        if crc16(body[:hcs_at]) != int.from_bytes(body[hcs_at:hcs_at + 2], "little"):
            raise MeterChecksumError("HDLC header check sequence (HCS) does not match")
        info = body[hcs_at + 2:-2]
    return Frame(body[2:after_dest], body[after_dest:after_src], body[control_at], info,
                 bool(body[0] & 0x08))


def extract_frame(buffer: bytearray) -> tuple[int, Frame] | None:
    """(bytes consumed, frame) once a whole frame is buffered; None to wait for more. Bytes before
    the opening flag are skipped (line noise, or the closing flag of the previous frame)."""
    start = buffer.find(FLAG)
    if start < 0:
        if len(buffer) > GARBAGE_LIMIT:
            raise DlmsDecodeError("no HDLC frame in the answer (no flag)")
        return None
    # Consecutive flags (a shared closing/opening flag, or idle flags) carry nothing.
    while start + 1 < len(buffer) and buffer[start + 1] == FLAG:
        start += 1
    if len(buffer) < start + 3:
        return None
    length = ((buffer[start + 1] & 0x07) << 8) | buffer[start + 2]
    if buffer[start + 1] & 0xF0 != 0xA0 or length < 7:
        raise DlmsDecodeError(f"garbled HDLC frame header {bytes(buffer[start:start + 3]).hex()}")
    end = start + 1 + length
    if len(buffer) < end + 1:
        return None
    if buffer[end] != FLAG:
        raise DlmsDecodeError("HDLC frame does not end with a flag where its length says")
    return end + 1, parse_frame(bytes(buffer[start + 1:end]))


def parse_ua_parameters(info: bytes) -> dict[int, int]:
    """Negotiated parameters of a UA (format 0x81, group 0x80): 5/6 max information field
    length transmit/receive, 7/8 window size transmit/receive. Missing: the defaults apply."""
    if not info:
        return {}
    if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80 or info[2] != len(info) - 3:
        raise DlmsDecodeError("UA parameter negotiation field is malformed")
    params: dict[int, int] = {}
    index = 3
    while index < len(info):
        if index + 2 > len(info):
            raise DlmsDecodeError("truncated UA parameter")
        ident, size = info[index], info[index + 1]
        value = info[index + 2:index + 2 + size]
        if len(value) != size or not 0 < size <= 4:
            raise DlmsDecodeError("truncated UA parameter")
        params[ident] = int.from_bytes(value, "big")
        index += 2 + size
    return params
