"""Register maps: shipped TOML, validation with key paths, request merging, every data type."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.meter_types import (DATA_TYPES, RegisterSpec, load_builtin_meter_types,
                                         parse_meter_types)
from utilitarian.amr.protocols.modbus_codec import (decode_block, decode_register, encode_register,
                                                    plan_reads)
from utilitarian.errors import ConfigErrors

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def spec(data_type="float32", address=0, function=4, word="big", byte="big", scale="1", series="s"):
    return RegisterSpec(series, address, function, data_type, word, byte, Decimal(scale), None)


def test_builtin_maps_load_and_name_their_sources():
    types = load_builtin_meter_types()
    assert {"eastron_sdm630", "eastron_sdm120", "abb_b23"} <= set(types)
    for meter_type in types.values():
        assert meter_type.source and meter_type.registers
    sdm = types["eastron_sdm630"]
    energy = next(r for r in sdm.registers if r.series == "active_energy_import")
    assert (energy.address, energy.function, energy.data_type, energy.unit) == (0x48, 4, "float32", "kWh")
    abb = types["abb_b23"]
    net = next(r for r in abb.registers if r.series == "active_energy_net")
    assert (net.data_type, net.scale, net.function) == ("int64", Decimal("0.01"), 3)


def test_parse_meter_types_reports_every_bad_key():
    raw = {
        "good": {"registers": [{"series": "v", "address": 0, "function": 4, "data_type": "uint16"}]},
        "bad": {
            "word_ordr": "big",
            "registers": [
                {"series": "a", "address": 0, "function": 4, "data_type": "float32"},
                {"series": "b", "address": 70000, "function": 5, "data_type": "flaot32"},
                {"series": "a", "address": 10, "function": 3, "data_type": "int16", "scale": 0},
                {"series": "c", "address": "12", "function": 3, "data_type": "int64", "unti": "V"},
            ],
        },
    }
    with pytest.raises(ConfigErrors) as info:
        parse_meter_types(raw, file="site.toml")
    keys = {err.key: err.reason for err in info.value.errors}
    assert "did you mean 'word_order'" in keys["meter_types.bad.word_ordr"]
    assert "between 0 and 65535" in keys["meter_types.bad.registers[1].address"]
    assert "3, 4" in keys["meter_types.bad.registers[1].function"]
    assert "did you mean 'float32'" in keys["meter_types.bad.registers[1].data_type"]
    assert "non-zero" in keys["meter_types.bad.registers[2].scale"]
    assert "integer" in keys["meter_types.bad.registers[3].address"]
    assert "did you mean 'unit'" in keys["meter_types.bad.registers[3].unti"]
    assert all(err.file == "site.toml" for err in info.value.errors)


def test_duplicate_series_and_type_defaults():
    raw = {"t": {"function": 3, "word_order": "little", "scale": 1,
                 "registers": [{"series": "x", "address": 1, "data_type": "int32"}]}}
    with pytest.raises(ConfigErrors) as info:   # scale is a register key, not a type key
        parse_meter_types(raw, file="f")
    assert info.value.errors[0].key == "meter_types.t.scale"
    del raw["t"]["scale"]
    (spec_x,) = parse_meter_types(raw, file="f")["t"].registers
    assert (spec_x.function, spec_x.word_order, spec_x.byte_order) == (3, "little", "big")
    raw["t"]["registers"].append({"series": "x", "address": 9, "data_type": "int16"})
    with pytest.raises(ConfigErrors) as info:
        parse_meter_types(raw, file="f")
    assert info.value.errors[0].key == "meter_types.t.registers[1].series"


def test_plan_merges_contiguous_registers_only():
    specs = [spec(address=a, series=f"s{a}") for a in (0, 2, 4, 10, 12)]
    specs.append(spec(address=0, function=3, series="holding"))
    blocks = plan_reads(specs)
    assert [(b.function, b.address, b.count) for b in blocks] == [(3, 0, 2), (4, 0, 6), (4, 10, 4)]
    bridged = plan_reads(specs, max_gap=4)
    assert [(b.function, b.address, b.count) for b in bridged] == [(3, 0, 2), (4, 0, 14)]
    capped = plan_reads([spec(address=a, series=str(a)) for a in range(0, 300, 2)], max_count=125)
    assert all(b.count <= 125 for b in capped) and sum(b.count for b in capped) == 300


def test_a_meter_types_plan_is_kept_per_type_object_and_series():
    from utilitarian.amr.meter_types import MeterType
    from utilitarian.amr.protocols.modbus import _plan

    specs = tuple(spec(address=a, series=f"s{a}") for a in (0, 2, 4, 10))
    first = MeterType("t", specs)
    assert [(b.address, b.count) for b in _plan(first, None)] == [(0, 6), (10, 2)]
    assert [(b.address, b.count) for b in _plan(first, ["s10", "s0"])] == [(0, 2), (10, 2)]
    assert _plan(first, ("s0", "s10")) is _plan(first, ["s0", "s10"])  # kept, whatever sequence asks
    # A type of the same name with another map (a reloaded config) gets its own plan
    second = MeterType("t", specs[:2])
    assert [(b.address, b.count) for b in _plan(second, None)] == [(0, 4)]


def test_decode_block_gives_each_value_in_the_blocks_order():
    (block,) = plan_reads([spec("uint16", address=1, series="b"), spec("int16", address=0, series="a")])
    assert [(s.series, v) for s, v in decode_block(block, [0xFFFF, 7])] == [("a", "-1"), ("b", "7")]


@pytest.mark.parametrize("data_type,value", [
    ("int16", "-1234"), ("uint16", "65535"), ("int32", "-2000000000"), ("uint32", "4000000000"),
    ("int64", "-9000000000000000000"), ("uint64", "18000000000000000000"),
    ("float32", "230.1"), ("float64", "12345.678901234"),
])
@pytest.mark.parametrize("word,byte", [("big", "big"), ("little", "big"), ("big", "little"),
                                       ("little", "little")])
def test_encode_decode_round_trip(data_type, value, word, byte):
    s = spec(data_type, word=word, byte=byte)
    registers = encode_register(s, value)
    assert len(registers) == DATA_TYPES[data_type]
    assert decode_register(s, registers) == value


def test_word_order_is_what_the_wire_carries():
    # 230.1 as float32 is 0x4366199A: big word order sends 0x4366 first, little sends 0x199A first.
    assert decode_register(spec("float32"), [0x4366, 0x199A]) == "230.1"
    assert decode_register(spec("float32", word="little"), [0x199A, 0x4366]) == "230.1"
    assert decode_register(spec("float32", byte="little"), [0x6643, 0x9A19]) == "230.1"
    assert decode_register(spec("int64"), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]) == "-2"


def test_scale_is_exact():
    s = spec("uint64", scale="0.01")
    assert decode_register(s, [0, 0, 0x0001, 0x86A0]) == "1000.00"   # 100000 * 0.01
    assert encode_register(s, "1000.01") == [0, 0, 0x0001, 0x86A1]
    with pytest.raises(ValueError):
        encode_register(s, "1000.001")
    assert decode_register(spec("int16", scale="0.001"), [950]) == "0.950"
    assert decode_register(spec("uint16", scale="10"), [5]) == "50"


def test_nan_and_short_blocks():
    nan = list(struct.unpack(">HH", struct.pack(">f", float("nan"))))
    assert decode_register(spec("float32"), nan) is None
    with pytest.raises(MeterProtocolError):
        decode_register(spec("float32"), [1])
    (block,) = plan_reads([spec(address=0, series="a"), spec(address=2, series="b")])
    with pytest.raises(MeterProtocolError):
        decode_block(block, [0, 0, 0])


@FAST
@given(data_type=st.sampled_from(sorted(DATA_TYPES)), word=st.sampled_from(["big", "little"]),
       byte=st.sampled_from(["big", "little"]), scale=st.sampled_from(["1", "0.01", "10", "-0.5"]),
       registers=st.lists(st.integers(-5, 70000), min_size=0, max_size=5))
def test_decode_never_raises_anything_but_protocol_errors(data_type, word, byte, scale, registers):
    try:
        text = decode_register(spec(data_type, word=word, byte=byte, scale=scale), registers)
    except MeterProtocolError:
        return
    assert text is None or Decimal(text).is_finite()
