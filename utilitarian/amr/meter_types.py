"""Meter types: Modbus register maps as frozen values, loaded from shipped TOML and validated from a site's.

A site's `[meter_types.<name>]` tables are checked with `parse_meter_types`, which names every bad key
(`meter_types.x.registers[3].data_type`) so one run shows all mistakes.
"""

from __future__ import annotations

import functools
import difflib
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources

from utilitarian.errors import ConfigError, ConfigErrors
from utilitarian.plugins import ConfigSection

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# data type -> number of 16-bit registers
DATA_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
              "float32": 2, "float64": 4}
ORDERS = ("big", "little")
FUNCTIONS = (3, 4)           # read holding registers, read input registers
MAX_REGISTERS_PER_READ = 125  # the Modbus limit for functions 3 and 4

_TYPE_KEYS = {"description", "source", "protocol", "function", "word_order", "byte_order",
              "max_registers_per_read", "max_gap", "registers"}
_REGISTER_KEYS = {"series", "address", "function", "data_type", "word_order", "byte_order",
                  "scale", "unit"}


@dataclass(frozen=True)
class RegisterSpec:
    """One value in a register map. `address` is the 0-based protocol address, not "30001" style."""

    series: str
    address: int
    function: int
    data_type: str
    word_order: str = "big"   # "big": most significant register first
    byte_order: str = "big"   # "big": high byte first inside each register (the Modbus norm)
    scale: Decimal = Decimal(1)
    unit: str | None = None

    @property
    def count(self) -> int:
        return DATA_TYPES[self.data_type]


@dataclass(frozen=True)
class MeterType:
    """A register map for one meter model; reads are merged into requests of up to
    `max_registers_per_read` registers, bridging at most `max_gap` unused registers."""

    name: str
    registers: tuple[RegisterSpec, ...]
    description: str = ""
    source: str = ""
    protocol: str = "modbus"
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    max_gap: int = 0

    @functools.cached_property  # asked for every series of every poll; the type never changes
    def series(self) -> tuple[str, ...]:
        return tuple(r.series for r in self.registers)


def _suggest(name: str, choices) -> str:
    hint = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


class _Collector:
    """Accumulates ConfigErrors for one file so every bad key is reported in one pass."""

    def __init__(self, file: str):
        self.file = file
        self.errors: list[ConfigError] = []

    def add(self, key: str, reason: str) -> None:
        self.errors.append(ConfigError(reason, file=self.file, key=key))

    def unknown_keys(self, table: dict, allowed: set[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                self.add(f"{path}.{key}", f"unknown key{_suggest(key, allowed)}")

    def integer(self, table: dict, key: str, path: str, low: int, high: int, default=None):
        value = table.get(key, default)
        if value is None:
            self.add(f"{path}.{key}", "missing (required)")
        elif isinstance(value, bool) or not isinstance(value, int):
            self.add(f"{path}.{key}", f"must be an integer, got {type(value).__name__}")
        elif not low <= value <= high:
            self.add(f"{path}.{key}", f"must be between {low} and {high}, got {value}")
        else:
            return value
        return None

    def choice(self, table: dict, key: str, path: str, choices, default=None):
        value = table.get(key, default)
        if value is None:
            self.add(f"{path}.{key}", "missing (required)")
        elif value not in choices:
            self.add(f"{path}.{key}", f"must be one of {', '.join(map(str, choices))}, got {value!r}"
                     + (_suggest(value, map(str, choices)) if isinstance(value, str) else ""))
        else:
            return value
        return None

    def text(self, table: dict, key: str, path: str, *, required: bool = False, max_len: int = 200):
        value = table.get(key)
        if value is None:
            if required:
                self.add(f"{path}.{key}", "missing (required)")
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            self.add(f"{path}.{key}", "must be a non-empty string")
        elif len(value) > max_len:
            self.add(f"{path}.{key}", f"must be at most {max_len} characters")
        else:
            return value
        return None


def _parse_scale(c: _Collector, table: dict, path: str) -> Decimal | None:
    raw = table.get("scale", 1)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        c.add(f"{path}.scale", f"must be a number, got {type(raw).__name__}")
        return None
    try:
        # str(float) keeps what was written: 0.01 stays 0.01, not 0.01000000000000000020816...
        scale = Decimal(str(raw)) if not isinstance(raw, str) else Decimal(raw.strip())
    except InvalidOperation:
        c.add(f"{path}.scale", f"must be a number, got {raw!r}")
        return None
    if not scale.is_finite() or scale.is_zero():
        c.add(f"{path}.scale", "must be a finite, non-zero number")
        return None
    return scale


def _parse_register(c: _Collector, raw, path: str, defaults: dict) -> RegisterSpec | None:
    if not isinstance(raw, dict):
        c.add(path, "must be a table")
        return None
    before = len(c.errors)
    c.unknown_keys(raw, _REGISTER_KEYS, path)
    series = c.text(raw, "series", path, required=True, max_len=64)
    address = c.integer(raw, "address", path, 0, 65535)
    function = c.choice(raw, "function", path, FUNCTIONS, defaults.get("function"))
    data_type = c.choice(raw, "data_type", path, tuple(DATA_TYPES))
    word_order = c.choice(raw, "word_order", path, ORDERS, defaults["word_order"])
    byte_order = c.choice(raw, "byte_order", path, ORDERS, defaults["byte_order"])
    scale = _parse_scale(c, raw, path)
    unit = c.text(raw, "unit", path, max_len=16)
    if address is not None and data_type is not None and address + DATA_TYPES[data_type] > 65536:
        c.add(f"{path}.address", "register runs past 65535")
    if len(c.errors) != before:
        return None
    return RegisterSpec(series, address, function, data_type, word_order, byte_order, scale, unit)


def _parse_type(c: _Collector, name: str, raw, path: str) -> MeterType | None:
    if not isinstance(raw, dict):
        c.add(path, "must be a table")
        return None
    before = len(c.errors)
    c.unknown_keys(raw, _TYPE_KEYS, path)
    description = c.text(raw, "description", path) or ""
    source = c.text(raw, "source", path, max_len=500) or ""
    protocol = c.choice(raw, "protocol", path, ("modbus",), "modbus")
    defaults = {"function": (c.choice(raw, "function", path, FUNCTIONS)
                             if "function" in raw else None),
                "word_order": c.choice(raw, "word_order", path, ORDERS, "big") or "big",
                "byte_order": c.choice(raw, "byte_order", path, ORDERS, "big") or "big"}
    max_read = c.integer(raw, "max_registers_per_read", path, 1, MAX_REGISTERS_PER_READ,
                         MAX_REGISTERS_PER_READ)
    max_gap = c.integer(raw, "max_gap", path, 0, MAX_REGISTERS_PER_READ, 0)
    registers_raw = raw.get("registers")
    registers: list[RegisterSpec] = []
    if not isinstance(registers_raw, list) or not registers_raw:
        c.add(f"{path}.registers", "must be a non-empty array of tables ([[...registers]])")
    else:
        seen: dict[str, int] = {}
        for index, item in enumerate(registers_raw):
            spec = _parse_register(c, item, f"{path}.registers[{index}]", defaults)
            if spec is None:
                continue
            if spec.series in seen:
                c.add(f"{path}.registers[{index}].series",
                      f"duplicate series {spec.series!r} (also registers[{seen[spec.series]}])")
                continue
            seen[spec.series] = index
            registers.append(spec)
    if len(c.errors) != before:
        return None
    return MeterType(name, tuple(registers), description, source, protocol, max_read, max_gap)


def parse_meter_types(raw: dict, *, file: str) -> dict[str, MeterType]:
    """Validate the `meter_types` table of a TOML file (its value, not the whole document).

    Raises ConfigErrors listing every bad key; returns {name: MeterType} otherwise.
    """
    c = _Collector(file)
    result: dict[str, MeterType] = {}
    if not isinstance(raw, dict):
        raise ConfigErrors([ConfigError("must be a table", file=file, key="meter_types")])
    for name, table in raw.items():
        path = f"meter_types.{name}"
        if not name.replace("_", "").replace("-", "").isalnum():
            c.add(path, "name must use letters, digits, '_' or '-'")
            continue
        meter_type = _parse_type(c, name, table, path)
        if meter_type is not None:
            result[name] = meter_type
    if c.errors:
        raise ConfigErrors(c.errors)
    return result


def load_meter_types_file(path: str) -> dict[str, MeterType]:
    """Read a TOML file holding `[meter_types.<name>]` tables (a site file or a shipped map)."""
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=path) from None
    return parse_meter_types(document.get("meter_types", {}), file=path)


def load_builtin_meter_types() -> dict[str, MeterType]:
    """The register maps shipped in utilitarian/amr/meter_types/*.toml."""
    result: dict[str, MeterType] = {}
    folder = resources.files("utilitarian.amr").joinpath("meter_types")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            document = tomllib.loads(entry.read_text(encoding="utf-8"))
            result.update(parse_meter_types(document.get("meter_types", {}), file=entry.name))
    return result


def load_registered_meter_types() -> dict[str, MeterType]:
    """Every register map of the `utilitarian.meter_types` entry points (ours: the shipped TOML),
    each a callable returning {name: MeterType}. A name two packages both define is a ConfigError:
    which one a poll used must not depend on installation order. A site's [meter_types] tables
    override these (see tasks/common.py)."""
    from utilitarian.plugins import METER_TYPES_GROUP, loaded

    result: dict[str, MeterType] = {}
    origin: dict[str, str] = {}
    for plugin_name, loader in loaded(METER_TYPES_GROUP).items():
        try:
            types = loader() if callable(loader) else loader
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"plugin {METER_TYPES_GROUP}:{plugin_name} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(types, dict) or not all(isinstance(t, MeterType) for t in types.values()):
            raise ConfigError(f"plugin {METER_TYPES_GROUP}:{plugin_name} did not return {{name: MeterType}}")
        for name, meter_type in types.items():
            if name in origin:
                raise ConfigError(f"meter type {name!r} is defined by plugins {origin[name]!r} and "
                                  f"{plugin_name!r} of {METER_TYPES_GROUP}")
            origin[name] = plugin_name
            result[name] = meter_type
    return result


def _check_section(raw: dict, file: str | None) -> list[ConfigError]:
    try:
        parse_meter_types(raw, file=file or "<defaults>")
    except ConfigErrors as exc:
        return list(exc.errors)
    except ConfigError as exc:
        return [exc]
    return []


# Registered as the `[meter_types]` table through the `utilitarian.config` entry-point group: a
# site's own register maps, checked by `config check` and every process alike.
CONFIG_SECTION = ConfigSection(None, check=_check_section)
