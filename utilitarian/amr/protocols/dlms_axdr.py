"""DLMS/COSEM data (IEC 62056-6-2, A-XDR encoding of the `Data` CHOICE), COSEM date-time, OBIS codes.

Decoding is bounded: every length is checked against what is left, nesting is capped, and every
failure is `DlmsDecodeError` (a MeterProtocolError). A truncated value never loops or yields a
half value (dlms-cosem 25.1's decoder loops forever on one; see docs/meters.md).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo

from utilitarian.amr.errors import MeterProtocolError

MAX_DEPTH = 8          # arrays of structures of ... deeper than a load profile ever is
MAX_ITEMS = 100_000    # elements of one array (a year of quarter hours is 35,040)


class DlmsDecodeError(MeterProtocolError):
    """Bytes that are not valid DLMS data (truncated, unknown tag, bad length)."""


# Data CHOICE tags (IEC 62056-6-2 table 2)
NULL, ARRAY, STRUCTURE, BOOLEAN, BIT_STRING = 0, 1, 2, 3, 4
DOUBLE_LONG, DOUBLE_LONG_UNSIGNED, OCTET_STRING, VISIBLE_STRING, UTF8_STRING, BCD = 5, 6, 9, 10, 12, 13
INTEGER, LONG, UNSIGNED, LONG_UNSIGNED, LONG64, LONG64_UNSIGNED, ENUM = 15, 16, 17, 18, 20, 21, 22
FLOAT32, FLOAT64, DATE_TIME, DATE, TIME = 23, 24, 25, 26, 27
_FIXED = {BOOLEAN: "?", DOUBLE_LONG: ">i", DOUBLE_LONG_UNSIGNED: ">I", INTEGER: ">b", LONG: ">h",
          UNSIGNED: ">B", LONG_UNSIGNED: ">H", LONG64: ">q", LONG64_UNSIGNED: ">Q", ENUM: ">B",
          FLOAT32: ">f", FLOAT64: ">d", BCD: ">B"}
_RAW = {DATE_TIME: 12, DATE: 5, TIME: 4}


@dataclass(frozen=True)
class Typed:
    """A value with its explicit tag, for encoding where the Python type is ambiguous."""

    tag: int
    value: object


class Reader:
    """A cursor over bytes that refuses to read past the end."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data = bytes(data)
        self.pos = offset

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int, what: str = "data") -> bytes:
        if size < 0 or size > self.left:
            raise DlmsDecodeError(f"truncated {what}: needs {size} byte(s), {self.left} left")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def byte(self, what: str = "data") -> int:
        return self.take(1, what)[0]

    def length(self, what: str = "length") -> int:
        """A-XDR length: one byte below 0x80, else 0x8N and N big-endian bytes."""
        first = self.byte(what)
        if first < 0x80:
            return first
        size = first & 0x7F
        if not 0 < size <= 4:
            raise DlmsDecodeError(f"bad {what} encoding 0x{first:02x}")
        return int.from_bytes(self.take(size, what), "big")


def encode_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def decode_data(data: bytes) -> object:
    """One complete Data value; trailing bytes are an error."""
    reader = Reader(data)
    value = read_data(reader)
    if reader.left:
        raise DlmsDecodeError(f"{reader.left} byte(s) after the data value")
    return value


def read_data(reader: Reader, depth: int = 0) -> object:
    """Python values: None, bool, int, float, bytes (octet strings, date-time as 12 bytes), str,
    list (array and structure alike)."""
    if depth > MAX_DEPTH:
        raise DlmsDecodeError(f"data nested deeper than {MAX_DEPTH}")
    tag = reader.byte("data tag")
    if tag == NULL:
        return None
    if tag in (ARRAY, STRUCTURE):
        count = reader.length("element count")
        if count > MAX_ITEMS or count > reader.left:   # each element takes at least one byte
            raise DlmsDecodeError(f"truncated {'array' if tag == ARRAY else 'structure'} of {count}")
        return [read_data(reader, depth + 1) for _ in range(count)]
    if tag in _FIXED:
        fmt = _FIXED[tag]
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, reader.take(size, "number"))
        if tag in (FLOAT32, FLOAT64) and (value != value or abs(value) == float("inf")):
            raise DlmsDecodeError("floating point value is not a finite number")
        return value
    if tag in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
        size = reader.length("string length")
        raw = reader.take(size, "string")
        if tag == OCTET_STRING:
            return raw
        try:
            return raw.decode("ascii" if tag == VISIBLE_STRING else "utf-8")
        except UnicodeDecodeError:
            raise DlmsDecodeError("string is not valid text") from None
    if tag == BIT_STRING:
        bits = reader.length("bit string length")
        return reader.take((bits + 7) // 8, "bit string")
    if tag in _RAW:
        return reader.take(_RAW[tag], "date/time")
    raise DlmsDecodeError(f"unsupported data tag {tag}")


def encode_data(value: object) -> bytes:
    """Encode Python values: None, bool, int (double-long or long64 by size), bytes, str, list
    (a structure), Typed for anything else."""
    if isinstance(value, Typed):
        tag, inner = value.tag, value.value
        if tag in (ARRAY, STRUCTURE):
            items = list(inner)  # type: ignore[call-overload]
            return bytes([tag]) + encode_length(len(items)) + b"".join(encode_data(v) for v in items)
        if tag in _FIXED:
            return bytes([tag]) + struct.pack(_FIXED[tag], inner)
        if tag in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
            raw = inner if isinstance(inner, bytes) else str(inner).encode(
                "ascii" if tag == VISIBLE_STRING else "utf-8")
            return bytes([tag]) + encode_length(len(raw)) + raw
        if tag in _RAW:
            return bytes([tag]) + bytes(inner)  # type: ignore[arg-type]
        raise ValueError(f"cannot encode tag {tag}")
    if value is None:
        return b"\x00"
    if isinstance(value, bool):
        return encode_data(Typed(BOOLEAN, value))
    if isinstance(value, int):
        return encode_data(Typed(DOUBLE_LONG if -2**31 <= value < 2**31 else LONG64, value))
    if isinstance(value, (bytes, bytearray)):
        return encode_data(Typed(OCTET_STRING, bytes(value)))
    if isinstance(value, str):
        return encode_data(Typed(VISIBLE_STRING, value))
    if isinstance(value, (list, tuple)):
        return encode_data(Typed(STRUCTURE, value))
    raise ValueError(f"cannot encode {type(value).__name__}")


# -- OBIS codes ------------------------------------------------------------------------------

_OBIS_TEXT = re.compile(r"^(?:(\d+)-(\d+):)?(\d+)\.(\d+)\.(\d+)(?:[.*](\d+))?$")


def parse_obis(text: str) -> bytes:
    """`1-0:1.8.0*255`, `1-0:1.8.0`, `1.0.1.8.0.255` or 12 hex digits to the 6-byte logical name.
    A-B are required (guessing them would read another object); an omitted F means 255."""
    raw = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{12}", raw):
        return bytes.fromhex(raw)
    dotted = raw.split(".")
    if len(dotted) == 6 and all(p.isdigit() for p in dotted):
        groups = [int(p) for p in dotted]
    else:
        match = _OBIS_TEXT.match(raw)
        if not match or match.group(1) is None:
            raise ValueError(f"{text!r} is not an OBIS code like 1-0:1.8.0*255")
        groups = [int(g) if g is not None else 255 for g in match.groups()]
    if any(g > 255 for g in groups):
        raise ValueError(f"{text!r}: OBIS value groups are 0-255")
    return bytes(groups)


def format_obis(name: bytes) -> str:
    a, b, c, d, e, f = name
    return f"{a}-{b}:{c}.{d}.{e}*{f}"


def short_obis(name: bytes) -> str:
    """The series name of an object: `1-0:1.8.0` (F=255 left out, as meters print it)."""
    text = format_obis(name)
    return text[:-4] if text.endswith("*255") else text


# -- COSEM date-time (12 octets) ---------------------------------------------------------------

NOT_SPECIFIED_DEVIATION = -0x8000


def encode_datetime(moment: datetime, zone: tzinfo | None = None) -> bytes:
    """12-octet date-time. The deviation is the standard's: minutes *from local time to UTC*
    (UTC minus local), so CET is -60; clock status 0x80 while daylight saving time is active."""
    local = moment.astimezone(zone) if zone is not None else moment
    offset = local.utcoffset() or timedelta(0)
    deviation = -int(offset.total_seconds() // 60)
    dst = local.dst()
    status = 0x80 if dst else 0x00
    return struct.pack(">HBBBBBBBhB", local.year, local.month, local.day, local.isoweekday(),
                       local.hour, local.minute, local.second, local.microsecond // 10000,
                       deviation, status)


def decode_datetime(raw: bytes, zone: tzinfo) -> datetime:
    """A meter's date-time as an aware datetime. Without a deviation, `zone` (the meter's clock
    zone) decides; a wildcard in a field that fixes the instant is an error, not a guess."""
    if len(raw) != 12:
        raise DlmsDecodeError(f"date-time has {len(raw)} octets, not 12")
    year, month, day, _dow, hour, minute, second, hundredths, deviation, _status = \
        struct.unpack(">HBBBBBBBhB", raw)
    if 0xFFFF == year or 0xFF in (month, day, hour, minute) or month > 12 or day > 31:
        raise DlmsDecodeError(f"date-time {raw.hex()} does not name an instant")
    second = 0 if second == 0xFF else second
    micro = 0 if hundredths == 0xFF else min(hundredths, 99) * 10000
    try:
        naive = datetime(year, month, day, hour, minute, second, micro)
    except ValueError as exc:
        raise DlmsDecodeError(f"date-time {raw.hex()} is not a valid date ({exc})") from None
    if deviation == NOT_SPECIFIED_DEVIATION:
        return naive.replace(tzinfo=zone)
    if not -720 <= deviation <= 720:
        raise DlmsDecodeError(f"date-time deviation {deviation} min is out of range")
    return naive.replace(tzinfo=timezone(timedelta(minutes=-deviation)))
