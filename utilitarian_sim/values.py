"""Plausible, deterministic meter values that advance with time: energy counters grow, voltages wobble.

Simulated meters derive every value from (meter number, series, unit, elapsed time), so a test can
recompute what a meter must have answered, and restarts do not jump backwards.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

ENERGY_UNITS = {"kWh", "Wh", "kvarh", "varh", "MWh", "m3", "GJ", "MJ"}


def simulated_value(meter_no: int, series: str, unit: str | None, elapsed: float,
                    *, quantum: Decimal = Decimal("0.01")) -> Decimal:
    """Value of `series` on meter `meter_no`, `elapsed` seconds after the simulation started,
    rounded to `quantum` (a register's scale, so integers encode exactly)."""
    seed = sum(series.encode()) % 17
    if unit in ENERGY_UNITS:
        # 0.5 .. 2.1 units per hour, different per meter, never decreasing.
        rate = Decimal(5 + (meter_no + seed) % 17) / 10
        value = Decimal(1000 + meter_no * 10 + seed) + rate * Decimal(elapsed) / 3600
    elif unit == "V":
        value = Decimal(230) + Decimal((meter_no + seed) % 21 - 10) / 10
    elif unit == "A":
        value = Decimal(1 + (meter_no + seed) % 9) + Decimal(int(elapsed) % 10) / 100
    elif unit in ("W", "VA", "var"):
        value = Decimal(500 + (meter_no * 37 + seed * 11) % 2500)
    elif unit == "Hz":
        value = Decimal("50.00") + Decimal((int(elapsed) % 5) - 2) / 100
    elif unit == "bar":
        value = Decimal("1.013") + Decimal(meter_no % 7) / 100
    elif unit in ("°C", "C", "degC"):
        value = Decimal(12 + meter_no % 8)
    else:
        value = Decimal("0.95")
    return value.quantize(quantum, rounding=ROUND_HALF_EVEN)
