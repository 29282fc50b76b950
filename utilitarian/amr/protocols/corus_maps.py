"""Where a Corus firmware keeps each parameter and how its database records are laid out.

Parameter ids differ between firmware families; every family keeps its map id ("FL_b0040") at 0x5E,
so a session reads that first. Record layouts are told apart by database and record length. Names
are the platform's documented parameter and database field names. Facts collected from the
firmware families the platform's own client (iflag, BSD-3) lists.
"""

from __future__ import annotations

from dataclasses import dataclass

MAP_ID_PARAMETER = 0x5E
PULSE_WEIGHT_PARAMETER = 1

# name -> (id, type) of the classic (non-MID) families.
_CLASSIC = {
    "firmware_version": (0, "string"), "input_pulse_weight": (1, "float"),
    "parameter_mapping_version": (0x5E, "string"), "compressibility_formula": (15, "byte"),
    "pressure_base": (19, "float"), "temperature_base": (24, "float"),
    "pressure_limit_low": (30, "float"), "pressure_limit_high": (31, "float"),
    "temperature_limit_low": (40, "float"), "temperature_limit_high": (41, "float"),
    "datetime": (106, "date"), "battery_days": (107, "word"),
    "index_unconverted": (148, "index"), "index_converted": (149, "index"),
    "flowrate_unconverted": (152, "float"), "flowrate_converted": (153, "float"),
    "temperature": (158, "float"), "pressure": (159, "float"),
}
_MID = {
    "firmware_version": (75, "string"), "kernel_version": (0, "string"),
    "input_pulse_weight": (1, "float"), "parameter_mapping_version": (0x5E, "string"),
    "compressibility_formula": (6, "byte"), "pressure_base": (10, "float"),
    "temperature_base": (15, "float"), "pressure_limit_low": (45, "float"),
    "pressure_limit_high": (46, "float"), "temperature_limit_low": (55, "float"),
    "temperature_limit_high": (56, "float"), "datetime": (90, "date"), "battery_days": (91, "word"),
    "index_unconverted": (107, "index9"), "index_converted": (108, "index9"),
    "flowrate_unconverted": (280, "float"), "flowrate_converted": (281, "float"),
    "temperature": (115, "float"), "pressure": (116, "float"), "pressure_2": (392, "float"),
}


def _with(base: dict, **changes) -> dict:
    out = dict(base)
    for name, ident in changes.items():
        out[name] = (ident, base[name][1] if name in base else "float")
    return out


PARAMETER_MAPS: dict[str, dict[str, tuple[int, str]]] = {
    **{m: _CLASSIC for m in ("057", "059", "062", "065", "068", "071", "200", "v1003", "b0038",
                             "b0039", "g0003", "i0002", "v0035", "v0038", "v0200", "v0201",
                             "v1001", "v1002")},
    "046": _with(_CLASSIC, firmware_version=75, temperature=156, pressure=157),
    "054": _with(_CLASSIC, firmware_version=75),
    "m1000": _with(_CLASSIC, pressure_base=29),
    **{m: _with(_CLASSIC, pressure_2=299) for m in ("b0040", "b0041", "b0042")},
    "m5a00": _MID,
    "m5a02": _with(_MID, datetime=90, battery_days=91, index_unconverted=107, index_converted=108,
                   flowrate_unconverted=279, flowrate_converted=280, temperature=115, pressure=116,
                   pressure_2=391),
    **{m: _with(_MID, datetime=90, battery_days=91, index_unconverted=107, index_converted=108,
                temperature=115, pressure=116) for m in ("m5a03", "m5a04")},
    "m5b00": _with(_MID, datetime=90, battery_days=91, index_unconverted=107, index_converted=108,
                   temperature=115, pressure=116, pressure_2=404),
    **{m: _with(_MID, datetime=90, battery_days=91, index_unconverted=107, index_converted=108,
                flowrate_unconverted=285, flowrate_converted=286, temperature=115, pressure=116,
                pressure_2=p2) for m, p2 in (("m5b04", 397), ("g5b00", 409))},
    "i5b00": _with(_MID, datetime=90, battery_days=91, index_unconverted=107, index_converted=108,
                   flowrate_unconverted=286, flowrate_converted=287, temperature=115, pressure=116,
                   pressure_2=398),
}
KNOWN_PARAMETERS = tuple(sorted({n for m in PARAMETER_MAPS.values() for n in m}))
TEXT_PARAMETERS = {"firmware_version", "kernel_version", "parameter_mapping_version", "datetime"}


def map_id_of(text: str) -> str:
    """"FL_b0040" -> "b0040" (ids are compared in lower case)."""
    return text.strip().split("_", 1)[-1].strip().lower()


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    pulses: bool = False          # counts input pulses: multiplied by the input pulse weight
    divisor: int = 1              # stored in thousandths


UNITS = {"consumption": "m3", "index": "m3", "counter": "m3", "flowrate": "m3/h",
         "temperature": "C", "pressure": "bar"}
NOT_READINGS = {"record_duration", "status", "start_date", "end_date"}


def _layout(db: str, *, mid: bool, long_counters: bool) -> list[Field]:
    """Record fields in order. Daily and monthly records have wider counters than interval and
    hourly ones; MID records add indexes, alarm counters and a second pressure sensor."""
    cons, cons_big = ("eword", "eulong") if long_counters else ("word", "ulong")
    div = 1000 if mid else 1
    fields = [Field("record_duration", "word" if long_counters else "byte"), Field("status", "byte"),
              Field("end_date", "date"),
              Field(f"consumption_unconverted_{db}", cons, True),
              Field(f"consumption_converted_{db}", cons_big, True, div),
              Field(f"consumption_unconverted_{db}_under_alarm", cons, True),
              Field(f"consumption_converted_{db}_under_alarm", cons_big, True, div)]
    fields += [Field(f"temperature_{db}_{s}", "float1") for s in ("minimum", "maximum", "average")]
    fields += [Field(f"pressure_{db}_{s}", "float2") for s in ("minimum", "maximum", "average")]
    fields += [Field(f"flowrate_{k}_{db}_{s}", "float3", True)
               for k in ("unconverted", "converted") for s in ("minimum", "maximum")]
    indexes = [Field("index_unconverted", "index"), Field("index_converted", "index"),
               Field("counter_unconverted_under_alarm", "index"),
               Field("counter_converted_under_alarm", "index")]
    if mid:
        fields += [Field("calorific_value", "float"), *indexes]
    else:
        fields.append(Field("unused_1", "null4"))
        if db == "monthly":
            fields += indexes
    if db == "monthly":
        fields += [Field("consumption_unconverted_monthly_maximum", "word", True),
                   Field("consumption_unconverted_monthly_maximum_date", "date"),
                   Field("consumption_converted_monthly_maximum", "ulong", True, div),
                   Field("consumption_converted_monthly_maximum_date", "date")]
    fields += [Field(f"flowrate_{k}_{db}_average", "float3", True) for k in ("unconverted", "converted")]
    fields += [Field("start_date", "date"), Field("unused_2", "null2")]
    if mid:
        fields += [Field(f"pressure_2_{db}_{s}", "float2") for s in ("minimum", "maximum", "average")]
    return fields


def _size(fields: list[Field]) -> int:
    from utilitarian.amr.protocols.corus_frames import LENGTHS

    return sum(LENGTHS[f.kind] for f in fields)


LAYOUTS: dict[str, dict[int, list[Field]]] = {}
for _db in ("interval", "hourly", "daily", "monthly"):
    _long = _db in ("daily", "monthly")
    LAYOUTS[_db] = {}
    for _mid in (False, True):
        _fields = _layout(_db, mid=_mid, long_counters=_long)
        LAYOUTS[_db][_size(_fields)] = _fields
        if _mid:  # later MID firmware appends two unused bytes
            _padded = _fields + [Field("unused_3", "null2")]
            LAYOUTS[_db][_size(_padded)] = _padded


def unit_of(name: str) -> str | None:
    for prefix, unit in UNITS.items():
        if name.startswith(prefix):
            return unit
    return None
