"""Pure Modbus register arithmetic: merging a register map into few requests, decoding and encoding values.

No I/O here, so the simulator (encode) and the client (decode) share one definition of every data type.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.meter_types import DATA_TYPES, MAX_REGISTERS_PER_READ, RegisterSpec
from utilitarian.amr.readings import decimal_string

_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
           "float32": "f", "float64": "d"}


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus request: `count` registers from `address` with `function`, covering `specs`."""

    function: int
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


def plan_reads(specs: Sequence[RegisterSpec], *, max_count: int = MAX_REGISTERS_PER_READ,
               max_gap: int = 0) -> list[ReadBlock]:
    """Merge registers of the same function that touch (or leave at most `max_gap` unused
    registers between them) into one request of at most `max_count` registers.

    Gaps stay 0 by default because many meters answer "illegal data address" for a read that
    spans an undefined register.
    """
    blocks: list[ReadBlock] = []
    ordered = sorted(specs, key=lambda s: (s.function, s.address))
    current: list[RegisterSpec] = []
    start = end = function = -1
    for spec in ordered:
        spec_end = spec.address + spec.count
        mergeable = (current and spec.function == function and spec.address <= end + max_gap
                     and max(end, spec_end) - start <= max_count)
        if mergeable:
            current.append(spec)
            end = max(end, spec_end)
            continue
        if current:
            blocks.append(ReadBlock(function, start, end - start, tuple(current)))
        current, start, end, function = [spec], spec.address, spec_end, spec.function
    if current:
        blocks.append(ReadBlock(function, start, end - start, tuple(current)))
    return blocks


def _to_bytes(spec: RegisterSpec, registers: Sequence[int]) -> bytes:
    words = list(registers) if spec.word_order == "big" else list(reversed(registers))
    order = "big" if spec.byte_order == "big" else "little"
    return b"".join(int(w).to_bytes(2, order) for w in words)


def _from_bytes(spec: RegisterSpec, raw: bytes) -> list[int]:
    order = "big" if spec.byte_order == "big" else "little"
    words = [int.from_bytes(raw[i:i + 2], order) for i in range(0, len(raw), 2)]
    return words if spec.word_order == "big" else list(reversed(words))


def _shortest_float32(value: float) -> str:
    """Shortest decimal text that reads back as the same float32 (230.1, not 230.100006103515625)."""
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return text
    return repr(value)


def _codec(spec: RegisterSpec) -> tuple[struct.Struct, struct.Struct, bool]:
    """(pack the registers as words, unpack the value, reverse the words first) of a spec's layout.
    The same bytes as `_to_bytes` followed by an unpack, built once per layout: every poll
    decodes every register of its block."""
    key = (spec.data_type, spec.word_order, spec.byte_order)
    codec = _CODECS.get(key)
    if codec is None:
        words = DATA_TYPES[spec.data_type]
        codec = _CODECS[key] = (struct.Struct(("<" if spec.byte_order == "little" else ">") + "H" * words),
                                struct.Struct(">" + _STRUCT[spec.data_type]), spec.word_order != "big")
    return codec


_CODECS: dict[tuple[str, str, str], tuple[struct.Struct, struct.Struct, bool]] = {}
_ONE = Decimal(1)


def decode_register(spec: RegisterSpec, registers: Sequence[int]) -> str | None:
    """Decimal string of one value (scale applied), or None when a float is NaN or infinite
    (meters use NaN for "not available"). Raises MeterProtocolError on a short or bad block."""
    pack, unpack, reverse = _codec(spec)
    if len(registers) != pack.size // 2:
        raise MeterProtocolError(
            f"register {spec.address} ({spec.series}): expected {spec.count} 16-bit registers")
    try:
        raw = pack.pack(*(registers[::-1] if reverse else registers))
    except struct.error:  # a word outside 0..0xFFFF (or not an int)
        raise MeterProtocolError(
            f"register {spec.address} ({spec.series}): expected {spec.count} 16-bit registers") from None
    (value,) = unpack.unpack(raw)
    scale = spec.scale
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = _shortest_float32(value) if spec.data_type == "float32" else repr(value)
        if scale == _ONE and "e" not in text and text != "-0.0" and text != "-0":
            return text  # plain notation without a sign on zero: already what decimal_string gives
        number = Decimal(text)
    elif scale == _ONE:
        return str(value)  # an int's text is its decimal string
    else:
        number = Decimal(value)
    if scale != _ONE:
        number = number * scale
    return decimal_string(number)


def encode_register(spec: RegisterSpec, value: Decimal | str | int) -> list[int]:
    """Registers that decode to `value` (the simulator's side). Integers must be exact multiples
    of the scale; raises ValueError otherwise."""
    raw = Decimal(value) / spec.scale
    code = _STRUCT[spec.data_type]
    if code in "fd":
        packed = struct.pack(">" + code, float(raw))
    else:
        if raw != raw.to_integral_value():
            raise ValueError(f"{value} is not a multiple of scale {spec.scale} for {spec.series}")
        packed = struct.pack(">" + code, int(raw))
    return _from_bytes(spec, packed)


def decode_block(block: ReadBlock, registers: Sequence[int]) -> list[tuple[RegisterSpec, str | None]]:
    """Slice a block's registers into its values: (spec, value) in the block's order. Pairs, not a
    dict by spec: a spec's hash covers its Decimal scale, ~2 us per value on every poll."""
    if len(registers) < block.count:
        raise MeterProtocolError(
            f"read of {block.count} registers at {block.address} returned {len(registers)}")
    base = block.address
    return [(spec, decode_register(spec, registers[spec.address - base:spec.address - base + spec.count]))
            for spec in block.specs]
