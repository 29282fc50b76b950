"""ACME's Modbus register maps, shipped as TOML in this package (utilitarian.meter_types)."""

from __future__ import annotations

from importlib import resources

from utilitarian.amr.meter_types import MeterType, parse_meter_types

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def load() -> dict[str, MeterType]:
    text = resources.files("acme_meters").joinpath("acme_em100.toml").read_text(encoding="utf-8")
    return parse_meter_types(tomllib.loads(text)["meter_types"], file="acme_meters/acme_em100.toml")
