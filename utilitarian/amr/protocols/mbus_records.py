"""M-Bus application layer (EN 13757-3): the fixed header of an RSP_UD and its variable data records
(DIF/DIFE/VIF/VIFE, data in integer, BCD, real, variable-length and date/time codings) to values
with units. Units are normalised (kWh, MJ, m3, kg, kW, MJ/h, m3/h, kg/h, °C, K, bar, s, V, A) by
exact decimal arithmetic.

A record whose VIF we do not know is skipped and reported, never guessed; a structure that cannot
be walked (truncated, reserved DIF) is MbusDecodeError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from utilitarian.amr.errors import MeterProtocolError, MeterUnsupported
from utilitarian.amr.readings import decimal_string

CI_LONG, CI_SHORT, CI_NONE = 0x72, 0x7A, 0x78
MSB_FIRST = (0x76, 0x7E, 0x73, 0x7B)     # mode 2 (most significant byte first): not supported
_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 6: 6, 7: 8}
_BCD_SIZES = {9: 1, 10: 2, 11: 3, 12: 4, 14: 6}
MAX_EXTENSIONS = 10                      # DIFE/VIFE chains longer than this are not from a meter


class MbusDecodeError(MeterProtocolError):
    """A variable data structure that cannot be walked."""


@dataclass(frozen=True)
class Header:
    identification: str          # 8 digits
    manufacturer: str            # 3 letters
    version: int
    medium: int
    access_number: int
    status: int


@dataclass(frozen=True)
class Record:
    quantity: str | None         # "energy", "volume", ... None: not understood (see `problem`)
    unit: str | None
    value: object                # Decimal, str, datetime or None
    function: int = 0            # 0 instantaneous, 1 maximum, 2 minimum, 3 during error state
    storage: int = 0
    tariff: int = 0
    subunit: int = 0
    problem: str | None = None   # why this record gives no value
    raw_vif: str = ""

    @property
    def key(self) -> str:
        """`energy`, `power_max`, `energy@s1`, `volume@t2`, `flow_temperature@u1` ..."""
        name = self.quantity or f"vif_{self.raw_vif}"
        name += ("", "_max", "_min", "_error")[self.function]
        for tag, number in (("s", self.storage), ("t", self.tariff), ("u", self.subunit)):
            if number:
                name += f"@{tag}{number}"
        return name


MEDIA = {0: "other", 2: "electricity", 3: "gas", 4: "heat", 6: "warm water", 7: "water",
         8: "heat cost allocator", 0x0C: "heat (inlet)", 0x0D: "heat/cooling", 0x16: "cold water"}


def _manufacturer(raw: int) -> str:
    return "".join(chr(((raw >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def _bcd(raw: bytes) -> int | None:
    """Little-endian packed BCD; a high nibble F in the last byte is a minus sign; other A-F: None."""
    digits = raw[::-1].hex().upper()
    if not digits:                       # variable-length BCD of length 0 (LVAR 0xC0/0xD0)
        return None
    negative = digits[0] == "F"
    if negative:
        digits = digits[1:]
    if not digits.isdigit():
        return None
    value = int(digits or "0")
    return -value if negative else value


def parse_header(ci: int, data: bytes) -> tuple[Header | None, int]:
    if ci in MSB_FIRST:
        raise MeterUnsupported(f"CI 0x{ci:02x}: mode 2 (most significant byte first) is not supported")
    if ci == CI_LONG:
        if len(data) < 12:
            raise MbusDecodeError("RSP_UD shorter than its 12-byte header")
        ident = data[3::-1].hex()
        if not ident.isdigit():
            raise MbusDecodeError(f"identification number {ident!r} is not BCD")
        header = Header(ident, _manufacturer(int.from_bytes(data[4:6], "little")), data[6], data[7],
                        data[8], data[9])
        return header, 12
    if ci == CI_SHORT:
        if len(data) < 4:
            raise MbusDecodeError("RSP_UD shorter than its 4-byte header")
        return None, 4
    if ci == CI_NONE:
        return None, 0
    raise MeterUnsupported(f"CI 0x{ci:02x} is not a variable data response")


def _scaled(number: int, exponent: int) -> Decimal:
    return Decimal(number).scaleb(exponent)


# Primary VIF (E bit removed) -> (quantity, unit, exponent of the normalised unit)
def _primary(vif: int) -> tuple[str, str | None, int] | None:
    n3, n2 = vif & 7, vif & 3
    top = vif & 0x78
    if top == 0x00:
        return "energy", "kWh", n3 - 6          # Wh 10^(n-3) = kWh 10^(n-6)
    if top == 0x08:
        return "energy", "MJ", n3 - 6           # J 10^n
    if top == 0x10:
        return "volume", "m3", n3 - 6
    if top == 0x18:
        return "mass", "kg", n3 - 3
    if vif & 0x7C == 0x20:
        return "on_time", "s", n2 * 100         # durations: n selects s, min, h, d (see _normalise)
    if vif & 0x7C == 0x24:
        return "operating_time", "s", n2 * 100
    if top == 0x28:
        return "power", "kW", n3 - 6            # W 10^(n-3)
    if top == 0x30:
        return "power", "MJ/h", n3 - 6          # J/h 10^n
    if top == 0x38:
        return "volume_flow", "m3/h", n3 - 6
    if top == 0x40:
        return "volume_flow", "m3/h", 1000 + n3  # m3/min 10^(n-7): marker, converted below
    if top == 0x48:
        return "volume_flow", "m3/h", 2000 + n3  # m3/s 10^(n-9)
    if top == 0x50:
        return "mass_flow", "kg/h", n3 - 3
    table = {0x58: "flow_temperature", 0x5C: "return_temperature", 0x60: "temperature_difference",
             0x64: "external_temperature", 0x68: "pressure"}
    if vif & 0x7C in table:
        unit = {"temperature_difference": "K", "pressure": "bar"}.get(table[vif & 0x7C], "°C")
        return table[vif & 0x7C], unit, n2 - 3
    if vif == 0x6C:
        return "date", None, 0
    if vif == 0x6D:
        return "datetime", None, 0
    if vif == 0x6E:
        return "hca_units", None, 0
    if vif & 0x7C == 0x70:
        return "averaging_duration", "s", n2 * 100
    if vif & 0x7C == 0x74:
        return "actuality_duration", "s", n2 * 100
    if vif == 0x78:
        return "fabrication_number", None, 0
    if vif == 0x79:
        return "enhanced_identification", None, 0
    if vif == 0x7A:
        return "bus_address", None, 0
    return None


# Duration VIFs say s, min, h or d in their last two bits; _primary marks them with exponent
# 100 * n (n = 0, seconds, needs no conversion) and _normalise converts to seconds.
_DURATION = {1: 60, 2: 3600, 3: 86400}


def _normalise(number: Decimal, exponent: int) -> Decimal:
    if exponent >= 2000:
        return number.scaleb(exponent - 2000 - 9) * 3600
    if exponent >= 1000:
        return number.scaleb(exponent - 1000 - 7) * 60
    if exponent >= 100:
        return number * _DURATION[exponent // 100]
    return number.scaleb(exponent)


def _extension_fb(code: int) -> tuple[str, str | None, int] | None:
    """First extension table (VIF 0xFB): the large units."""
    n1 = code & 1
    if code & 0x7E == 0x00:
        return "energy", "kWh", n1 + 2      # MWh 10^(n-1)
    if code & 0x7E == 0x08:
        return "energy", "MJ", n1 + 2       # GJ 10^(n-1)
    if code & 0x7E == 0x10:
        return "volume", "m3", n1 + 2       # m3 10^(n+2)
    if code & 0x7E == 0x18:
        return "mass", "kg", n1 + 5         # t 10^(n+2)
    if code & 0x7E == 0x28:
        return "power", "kW", n1 + 2        # MW 10^(n-1)
    if code & 0x7E == 0x30:
        return "power", "MJ/h", n1 + 2      # GJ/h 10^(n-1)
    return None


def _extension_fd(code: int) -> tuple[str, str | None, int] | None:
    """Second extension table (VIF 0xFD): the entries meters commonly send."""
    if code & 0x70 == 0x40:
        return "voltage", "V", (code & 0x0F) - 9
    if code & 0x70 == 0x50:
        return "current", "A", (code & 0x0F) - 12
    named = {0x0C: "model_version", 0x0E: "firmware_version", 0x0F: "software_version",
             0x17: "error_flags", 0x60: "reset_counter", 0x61: "cumulation_counter",
             0x74: "battery_days"}
    if code in named:
        return named[code], None, 0
    return None


class _Walker:
    def __init__(self, data: bytes, start: int):
        self.data, self.pos = data, start

    def take(self, size: int, what: str) -> bytes:
        if self.pos + size > len(self.data):
            raise MbusDecodeError(f"truncated {what}: needs {size} byte(s), {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]


def _date_g(raw: bytes) -> datetime | None:
    day, month = raw[0] & 0x1F, raw[1] & 0x0F
    year = 2000 + (((raw[0] & 0xE0) >> 5) | ((raw[1] & 0xF0) >> 1))
    try:
        return datetime(year, month, day)
    except ValueError:
        return None


def _datetime_f(raw: bytes) -> datetime | None:
    if raw[0] & 0x80:                  # IV bit: time invalid
        return None
    minute, hour, day, month = raw[0] & 0x3F, raw[1] & 0x1F, raw[2] & 0x1F, raw[3] & 0x0F
    year = 2000 + (((raw[2] & 0xE0) >> 5) | ((raw[3] & 0xF0) >> 1))
    try:
        return datetime(year, month, day, hour, minute)
    except ValueError:
        return None


def _value(coding: int, raw: bytes, lvar: int | None) -> tuple[object, str | None]:
    """(value, problem). Integers and BCD to int, real to Decimal, text to str."""
    if coding in _INT_SIZES:
        return int.from_bytes(raw, "little", signed=True), None
    if coding in _BCD_SIZES:
        value = _bcd(raw)
        return (value, None) if value is not None else (None, f"BCD value {raw[::-1].hex()} is invalid")
    if coding == 5:
        (real,) = struct.unpack("<f", raw)
        if real != real or abs(real) == float("inf"):
            return None, "real value is not finite"
        return Decimal(format(real, ".7g")), None
    if coding == 0x0D:
        if lvar is not None and lvar <= 0xBF:
            try:
                return raw[::-1].decode("ascii"), None
            except UnicodeDecodeError:
                return None, "text is not ASCII"
        if lvar is not None and 0xC0 <= lvar <= 0xDF:
            value = _bcd(raw)
            if value is None:
                return None, "variable-length BCD is invalid"
            return (-value if lvar >= 0xD0 else value), None
        return None, f"variable-length coding 0x{lvar:02x} is not supported"
    return None, None


def parse_records(data: bytes, start: int) -> tuple[list[Record], bool]:
    """Records of the variable data part from `start`; True when the meter says more records
    follow in the next telegram (DIF 0x1F)."""
    walker = _Walker(data, start)
    records: list[Record] = []
    more = False
    while walker.pos < len(data):
        dif = walker.byte("DIF")
        if dif == 0x2F:                           # idle filler
            continue
        if dif in (0x0F, 0x1F):                   # manufacturer specific data to the end
            more = dif == 0x1F
            break
        if dif & 0x0F == 0x0F:
            raise MbusDecodeError(f"reserved special function DIF 0x{dif:02x}")
        coding = dif & 0x0F
        function = (dif >> 4) & 3
        storage, tariff, subunit = (dif >> 6) & 1, 0, 0
        ext, shift_s, shift_t, shift_u = dif & 0x80, 1, 0, 0
        for _ in range(MAX_EXTENSIONS + 1):
            if not ext:
                break
            dife = walker.byte("DIFE")
            storage |= (dife & 0x0F) << shift_s
            tariff |= ((dife >> 4) & 3) << shift_t
            subunit |= ((dife >> 6) & 1) << shift_u
            shift_s, shift_t, shift_u = shift_s + 4, shift_t + 2, shift_u + 1
            ext = dife & 0x80
        else:
            raise MbusDecodeError("DIFE chain longer than 10")
        vif = walker.byte("VIF")
        vif_bytes = [vif]
        plain_unit = None
        if vif & 0x7F == 0x7C:                    # plain-text unit follows
            size = walker.byte("plain-text VIF length")
            plain_unit = walker.take(size, "plain-text VIF")[::-1].decode("ascii", "replace")
        vifes = []
        ext = vif & 0x80
        for _ in range(MAX_EXTENSIONS + 1):
            if not ext:
                break
            vife = walker.byte("VIFE")
            vifes.append(vife)
            ext = vife & 0x80
        else:
            raise MbusDecodeError("VIFE chain longer than 10")
        vif_bytes += vifes
        if coding == 8:
            raise MeterUnsupported("selection-for-readout records (DIF coding 8) in an answer")
        lvar = None
        if coding == 0x0D:
            lvar = walker.byte("LVAR")
            size = lvar if lvar <= 0xBF else (lvar - 0xC0 if lvar <= 0xCF else lvar - 0xD0 if lvar <= 0xDF
                                              else lvar - 0xE0 if lvar <= 0xEF else 0)
            if lvar > 0xEF:
                raise MeterUnsupported(f"variable-length coding 0x{lvar:02x}")
        else:
            size = _INT_SIZES.get(coding) or _BCD_SIZES.get(coding) or (4 if coding == 5 else 0)
        raw = walker.take(size, "record data")
        records.append(_record(vif, vifes, coding, raw, lvar, function, storage, tariff, subunit,
                               plain_unit, bytes(vif_bytes).hex()))
    return records, more


def _record(vif, vifes, coding, raw, lvar, function, storage, tariff, subunit, plain_unit, raw_vif) -> Record:
    common = dict(function=function, storage=storage, tariff=tariff, subunit=subunit, raw_vif=raw_vif)
    if vif == 0xFB and vifes:
        spec, rest = _extension_fb(vifes[0] & 0x7F), vifes[1:]
    elif vif == 0xFD and vifes:
        spec, rest = _extension_fd(vifes[0] & 0x7F), vifes[1:]
    elif vif & 0x7F == 0x7C:
        spec, rest = ("plain_" + "".join(c if c.isalnum() else "_" for c in plain_unit or ""), plain_unit, 0), vifes
    elif vif & 0x7F == 0x7F or vif in (0xFF,):
        return Record(None, None, None, problem="manufacturer-specific VIF", **common)
    else:
        spec, rest = _primary(vif & 0x7F), vifes
    if spec is None:
        return Record(None, None, None, problem=f"unknown VIF {raw_vif}", **common)
    quantity, unit, exponent = spec
    factor = Decimal(1)
    for vife in rest:
        code = vife & 0x7F
        if code <= 0x1F:
            return Record(quantity, unit, None, problem=f"the meter flags this record with error code {code}", **common)
        if 0x70 <= code <= 0x77:
            factor *= Decimal(1).scaleb((code & 7) - 6)
        elif code == 0x7D:
            factor *= 1000
        else:
            quantity = f"{quantity}+{code:02x}"   # a combinable VIFE changes the meaning: keep it apart
    if quantity == "date":
        moment = _date_g(raw) if coding == 2 else None
        return Record("date", None, moment, problem=None if moment else "date is invalid", **common)
    if quantity == "datetime":
        moment = _datetime_f(raw) if coding == 4 else None
        return Record("datetime", None, moment, problem=None if moment else "date and time invalid", **common)
    value, problem = _value(coding, raw, lvar)
    if problem or value is None:
        return Record(quantity, unit, None, problem=problem or "record without data", **common)
    if isinstance(value, str):
        return Record(quantity, unit, value.strip(), **common)
    number = _normalise(Decimal(value), exponent) * factor
    return Record(quantity, unit, Decimal(decimal_string(number)), **common)
