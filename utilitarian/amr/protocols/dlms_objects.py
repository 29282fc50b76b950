"""COSEM interface classes a poller reads (IEC 62056-6-2): Data (1), Register (3) and Extended
register (4) with scaler and unit, Clock (8), Profile generic (7) with range selective access.

Values become exact Decimal strings: value x 10^scaler, never through a float for integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal

from utilitarian.amr.errors import MeterProtocolError, MeterUnsupported
from utilitarian.amr.protocols.dlms_axdr import (ARRAY, DATE_TIME, INTEGER, LONG_UNSIGNED, OCTET_STRING,
                                                 STRUCTURE, DlmsDecodeError, Typed, decode_datetime,
                                                 encode_data, encode_datetime, short_obis)
from utilitarian.amr.readings import decimal_string

DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK = 1, 3, 4, 5, 7, 8
CLOCK_OBIS = bytes([0, 0, 1, 0, 0, 255])
LOAD_PROFILE_OBIS = bytes([1, 0, 99, 1, 0, 255])
# IEC 62056-6-2 unit enumeration (the ones meters report; others keep their number)
UNITS = {1: "a", 2: "mo", 3: "wk", 4: "d", 5: "h", 6: "min", 7: "s", 8: "°", 9: "°C", 10: "currency",
         11: "m", 12: "m/s", 13: "m3", 14: "m3", 15: "m3/h", 16: "m3/h", 17: "m3/d", 18: "m3/d",
         19: "l", 20: "kg", 21: "N", 22: "Nm", 23: "Pa", 24: "bar", 25: "J", 26: "J/h", 27: "W",
         28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 34: "C", 35: "V", 36: "V/m",
         37: "F", 38: "Ω", 39: "Ωm2/m", 40: "Wb", 41: "T", 42: "A/m", 43: "H", 44: "Hz",
         45: "1/(Wh)", 46: "1/(varh)", 47: "1/(VAh)", 48: "V2h", 49: "A2h", 50: "kg/s", 51: "S",
         52: "K", 53: "1/(V2h)", 54: "1/(A2h)", 55: "1/m3", 56: "%", 57: "Ah", 60: "Wh/m3",
         61: "J/m3", 62: "mol%", 63: "g/m3", 64: "Pa s", 65: "J/kg", 70: "dBm", 71: "dBµV", 72: "dB"}
NO_UNIT = (0, 254, 255)   # 255 "count": a number without a unit


@dataclass(frozen=True)
class ScalerUnit:
    scaler: int = 0
    unit: str | None = None


@dataclass(frozen=True)
class CaptureObject:
    class_id: int
    obis: bytes
    attribute: int
    data_index: int = 0

    @property
    def name(self) -> str:
        return short_obis(self.obis)


def parse_scaler_unit(value: object, what: str) -> ScalerUnit:
    if (not isinstance(value, list) or len(value) != 2 or isinstance(value[0], bool)
            or not isinstance(value[0], int) or not isinstance(value[1], int)):
        raise DlmsDecodeError(f"{what}: scaler_unit is not a structure of two integers")
    scaler, unit = value
    if not -20 <= scaler <= 20:
        raise DlmsDecodeError(f"{what}: scaler {scaler} out of range")
    return ScalerUnit(scaler, None if unit in NO_UNIT else UNITS.get(unit, f"unit{unit}"))


def scaled(value: object, scaler: ScalerUnit, what: str) -> str:
    """value x 10^scaler as a decimal string; non-numbers are MeterUnsupported (not a reading)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MeterUnsupported(f"{what}: value is {type(value).__name__}, not a number")
    number = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    return decimal_string(number.scaleb(scaler.scaler))


def parse_capture_objects(value: object, what: str = "capture objects") -> tuple[CaptureObject, ...]:
    if not isinstance(value, list):
        raise DlmsDecodeError(f"{what}: not an array")
    out = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 4 or not isinstance(item[1], bytes)
                or len(item[1]) != 6 or not all(isinstance(v, int) for v in (item[0], item[2], item[3]))):
            raise DlmsDecodeError(f"{what}: element is not {{class_id, logical_name, attribute, data_index}}")
        out.append(CaptureObject(item[0], item[1], item[2], item[3]))
    return tuple(out)


def range_descriptor(start: datetime, end: datetime, zone: tzinfo,
                     restricting: CaptureObject | None = None) -> bytes:
    """Selective access by range (selector 1) on the clock column, all columns selected."""
    clock = restricting or CaptureObject(CLOCK, CLOCK_OBIS, 2, 0)
    restricting_object = Typed(STRUCTURE, [Typed(LONG_UNSIGNED, clock.class_id),
                                           Typed(OCTET_STRING, clock.obis),
                                           Typed(INTEGER, clock.attribute),
                                           Typed(LONG_UNSIGNED, clock.data_index)])
    data = Typed(STRUCTURE, [restricting_object,
                             Typed(OCTET_STRING, encode_datetime(start, zone)),
                             Typed(OCTET_STRING, encode_datetime(end, zone)),
                             Typed(ARRAY, [])])
    return b"\x01" + encode_data(data)


def clock_value(value: object, zone: tzinfo, what: str = "clock") -> datetime:
    """A date-time attribute (octet-string(12) or date-time type) as an aware datetime."""
    if not isinstance(value, bytes):
        raise DlmsDecodeError(f"{what}: not a date-time octet string")
    try:
        return decode_datetime(value, zone)
    except DlmsDecodeError as exc:
        raise DlmsDecodeError(f"{what}: {exc.message}") from None


def clock_data(moment: datetime, zone: tzinfo) -> bytes:
    return encode_data(Typed(OCTET_STRING, encode_datetime(moment, zone)))


def check_row(row: object, width: int, what: str) -> list:
    if not isinstance(row, list) or len(row) != width:
        raise MeterProtocolError(f"{what}: a buffer row does not have the {width} captured columns")
    return row


__all__ = ["CaptureObject", "ScalerUnit", "DATE_TIME", "parse_scaler_unit", "scaled",
           "parse_capture_objects", "range_descriptor", "clock_value", "clock_data", "check_row"]
