"""Itron/Actaris Corus over I-FLAG (single address mode), pure: CRC, request builders, response
frame extraction and the data types of parameters and database records.

CRC-16 with polynomial 0x8005, initial value 0, no reflection, sent least significant byte first;
checked against four published frames (the break message, the "PASS" prompt, two database reads).
Extractors return (bytes consumed, value) or None for "need more"; malformed input raises
MeterProtocolError, so arbitrary bytes can only end in a typed error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from utilitarian.amr.errors import MeterProtocolError

SOH, STX, ETX, ACK, NAK = 0x01, 0x02, 0x03, 0x06, 0x15
READ, WRITE, DATABASE = 0xBF, 0xFF, 0xBE
DATABASES = {"interval": 0, "hourly": 1, "daily": 2, "monthly": 3}
ALL_FIELDS = b"\xf9\xff\xff\xff"       # database read option mask: every field of the record
PASSWORD_PROMPT = b"PASS"
MAX_NOISE = 512
LAST_FRAME = 0x8000


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def with_crc(data: bytes) -> bytes:
    return data + crc16(data).to_bytes(2, "little")


def encode_id(parameter_id: int) -> bytes:
    """One byte below 0xF0; larger ids as two bytes with the top nibble set."""
    if not 0 <= parameter_id < 0x1000:
        raise ValueError(f"parameter id {parameter_id} out of range")
    if parameter_id < 0xF0:
        return bytes([parameter_id])
    return (0xF000 | parameter_id).to_bytes(2, "big")


def build_read(ids: list[int]) -> bytes:
    body = b"".join(encode_id(i) for i in ids)
    if len(body) > 255:
        raise ValueError("too many parameters for one read")
    return with_crc(bytes([SOH, READ, len(body)]) + body + bytes([ETX]))


def build_write(items: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(encode_id(i) + data for i, data in items)
    if len(body) > 255:
        raise ValueError("too much data for one write")
    return with_crc(bytes([SOH, WRITE, len(body)]) + body + bytes([ETX]))


def build_database_read(database: str, newest: datetime | None, oldest: datetime | None) -> bytes:
    """Records from `newest` back to `oldest` (device local time; None = no limit)."""
    body = (bytes([DATABASES[database]]) + ALL_FIELDS + encode_date(newest) + encode_date(oldest))
    return with_crc(bytes([SOH, DATABASE, len(body)]) + body + bytes([ETX]))


def build_break() -> bytes:
    return with_crc(bytes([SOH]) + b"B0" + bytes([ETX]))


def build_password(password: str) -> bytes:
    return with_crc(password.encode("latin-1", errors="replace"))


# -- data types --------------------------------------------------------------------------------
LENGTHS = {"byte": 1, "word": 2, "eword": 3, "ulong": 4, "eulong": 5, "float": 4, "float1": 2,
           "float2": 2, "float3": 2, "index": 8, "index9": 9, "date": 4, "string": 8,
           "null2": 2, "null4": 4}


def encode_date(moment: datetime | None) -> bytes:
    """Seconds in bits 0-5, minutes 6-11, hours 12-16, day 17-21, month 22-25, years since 2000
    26-31, little endian; zero for "no date"."""
    if moment is None:
        return b"\x00\x00\x00\x00"
    if not 2000 <= moment.year < 2064:
        raise ValueError("Corus dates cover 2000-2063")
    value = (moment.second | moment.minute << 6 | moment.hour << 12 | moment.day << 17
             | moment.month << 22 | (moment.year - 2000) << 26)
    return value.to_bytes(4, "little")


def decode_date(data: bytes) -> datetime:
    value = int.from_bytes(data, "little")
    try:
        return datetime(2000 + (value >> 26), (value >> 22) & 0xF, (value >> 17) & 0x1F,
                        (value >> 12) & 0x1F, (value >> 6) & 0x3F, value & 0x3F)
    except ValueError:
        raise MeterProtocolError(f"not a valid Corus date: {data.hex()}") from None


def _finite(value: float, kind: str) -> Decimal:
    if value != value or value in (float("inf"), float("-inf")):
        raise MeterProtocolError(f"{kind} is not a finite number")
    # A 32-bit float carries about 7 significant digits; more would be noise of the conversion.
    return Decimal(f"{value:.7g}").normalize()


def decode(kind: str, data: bytes):
    """A parameter or record field: Decimal, int (byte), str, datetime, or None when the device
    sends "no value" (every byte 0xFF) or the field is padding."""
    if len(data) != LENGTHS[kind]:
        raise MeterProtocolError(f"{kind} field of {len(data)} bytes, expected {LENGTHS[kind]}")
    if kind in ("null2", "null4") or data == b"\xff" * len(data):
        return None
    if kind == "date":
        return decode_date(data)
    if kind == "string":
        return data.rstrip(b"\x00").decode("latin-1")
    if kind == "byte":
        return data[0]
    if kind in ("word", "eword", "ulong", "eulong"):
        return Decimal(int.from_bytes(data, "little"))
    if kind == "float":
        return _finite(struct.unpack("<f", data)[0], "float")
    raw = int.from_bytes(data, "little")
    if kind == "float1":          # signed hundredths (temperatures)
        return Decimal(int.from_bytes(data, "little", signed=True)).scaleb(-2)
    if kind == "float2":          # 15-bit number, bit 15: exponent -3 or -2 (pressures)
        return Decimal(raw & 0x7FFF).scaleb((raw >> 15) - 3)
    if kind == "float3":          # 14-bit number, bits 14-15: exponent -1..2 (flow rates)
        return Decimal(raw & 0x3FFF).scaleb((raw >> 14) - 1)
    if kind in ("index", "index9"):
        split = 4 if kind == "index" else 5
        whole = int.from_bytes(data[:split], "little")
        fraction = int.from_bytes(data[split:], "little")
        return (Decimal(whole) + Decimal(fraction).scaleb(-8)).normalize()
    raise AssertionError(kind)  # pragma: no cover - LENGTHS and this function list the same kinds


def encode(kind: str, value) -> bytes:
    """Only what a client writes: dates (set_time) and plain numbers."""
    if kind == "date":
        return encode_date(value)
    if kind in ("byte", "word", "ulong"):
        return int(value).to_bytes(LENGTHS[kind], "little")
    if kind == "float":
        return struct.pack("<f", float(value))
    raise ValueError(f"writing {kind} values is not supported")


# -- response frames ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """ACK, NAK, or a data frame `SOH length data ETX CRC` (crc_ok False on a mismatch)."""

    kind: str                 # "ack", "nak" or "data"
    data: bytes = b""
    crc_ok: bool = True


def extract_frame(buf: bytearray) -> tuple[int, Frame] | None:
    start = 0
    while start < len(buf) and buf[start] not in (SOH, ACK, NAK):
        start += 1
    if start > MAX_NOISE:
        raise MeterProtocolError(f"{start} bytes of noise where a Corus frame was expected")
    if start >= len(buf):
        return None
    if buf[start] == ACK:
        return start + 1, Frame("ack")
    if buf[start] == NAK:
        return start + 1, Frame("nak")
    if len(buf) < start + 2:
        return None
    length = buf[start + 1]
    end = start + 2 + length          # index of ETX
    if len(buf) < end + 3:
        return None
    if buf[end] != ETX:
        raise MeterProtocolError(f"Corus frame of length {length} does not end with ETX")
    body = bytes(buf[start:end + 1])
    ok = crc16(body) == int.from_bytes(buf[end + 1:end + 3], "little")
    return end + 3, Frame("data", bytes(buf[start + 2:end]), ok)


def extract_wakeup(buf: bytearray) -> tuple[int, bool] | None:
    """The device's answer to the wake-up: three NUL bytes."""
    at = buf.find(b"\x00\x00\x00")
    if at < 0:
        if len(buf) > MAX_NOISE:
            raise MeterProtocolError("no wake-up answer in the noise")
        return None
    return at + 3, True


def extract_line(buf: bytearray) -> tuple[int, str] | None:
    """The identification line "/....CRLF"."""
    start = buf.find(b"/")
    if start < 0:
        if len(buf) > MAX_NOISE:
            raise MeterProtocolError("no identification line")
        return None
    end = buf.find(b"\n", start)
    if end < 0:
        if len(buf) - start > 100:
            raise MeterProtocolError("identification line too long")
        return None
    return end + 1, bytes(buf[start:end]).decode("latin-1").strip()


def extract_prompt(buf: bytearray) -> tuple[int, bool] | None:
    """The password prompt "PASS" + CRC; True when its CRC is right."""
    at = buf.find(PASSWORD_PROMPT)
    if at < 0:
        if len(buf) > MAX_NOISE:
            raise MeterProtocolError("no password prompt")
        return None
    if len(buf) < at + 6:
        return None
    return at + 6, crc16(PASSWORD_PROMPT) == int.from_bytes(buf[at + 4:at + 6], "little")


@dataclass(frozen=True)
class DatabaseFrame:
    number: int
    last: bool
    record_size: int | None     # only in the first frame
    payload: bytes


def parse_database_frame(data: bytes, *, first: bool) -> DatabaseFrame:
    if len(data) < (3 if first else 2):
        raise MeterProtocolError("database frame too short")
    word = int.from_bytes(data[:2], "little")
    if first:
        return DatabaseFrame(word & 0x7FFF, bool(word & LAST_FRAME), data[2], data[3:])
    return DatabaseFrame(word & 0x7FFF, bool(word & LAST_FRAME), None, data[2:])
