"""What a meter poll produces: readings (series, UTC timestamp, Decimal string, unit) and system events.

Values travel as Decimal strings so that no float ever rounds a register between the wire and the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

TITLE_MAX = 50
CONTENT_MAX = 500

# Plain decimal notation only: meters never send exponents, and an exponent in the store is a bug.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)\Z")
# Text that is its own decimal string already (what drivers and the codec mostly produce): no "+",
# no leading zeros or dot, no trailing dot. "-0", "-0.00" match but are not canonical (the sign goes).
_CANONICAL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?\Z").match
_NEGATIVE_ZERO = re.compile(r"-0(?:\.0+)?\Z").match


def decimal_string(value: Decimal | int | str) -> str:
    """Canonical text of a number: no exponent, sign only when negative, precision kept."""
    number = value if isinstance(value, Decimal) else Decimal(value)
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    text = format(number, "f")
    if text.startswith("-") and number.is_zero():
        text = text[1:]
    return text


def parse_number(text: str) -> str | None:
    """Decimal string of a meter's numeric text ("00012.340" -> "12.340"), or None if not a number."""
    if _CANONICAL(text) and not _NEGATIVE_ZERO(text):
        return text  # every Reading checks its value: skip the Decimal round trip when it is canonical
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    try:
        return decimal_string(Decimal(text))
    except (InvalidOperation, ValueError):
        return None


@dataclass(frozen=True)
class Reading:
    """One value of one series at one instant. `timestamp` is normalised to UTC."""

    series: str
    timestamp: datetime
    value: str
    unit: str | None = None

    def __post_init__(self) -> None:
        if not self.series:
            raise ValueError("Reading.series must not be empty")
        if self.timestamp.tzinfo is not timezone.utc:  # UTC already: the common case, nothing to do
            offset = self.timestamp.utcoffset()
            if offset is None:
                raise ValueError("Reading.timestamp must be timezone-aware")
            object.__setattr__(self, "timestamp", self.timestamp.astimezone(timezone.utc))
        value = self.value
        canonical = parse_number(value)
        if canonical is None:
            raise ValueError(f"Reading.value is not a decimal string: {value!r}")
        if canonical is not value:
            object.__setattr__(self, "value", canonical)

    def as_dict(self) -> dict:
        return {"series": self.series, "timestamp": self.timestamp.isoformat(),
                "value": self.value, "unit": self.unit}


@dataclass(frozen=True)
class SystemEvent:
    """Something an operator should see about a meter (clock set, error register, alarm)."""

    title: str
    content: str = ""

    def __post_init__(self) -> None:
        if not self.title or len(self.title) > TITLE_MAX:
            raise ValueError(f"SystemEvent.title must be 1..{TITLE_MAX} characters")
        if len(self.content) > CONTENT_MAX:
            raise ValueError(f"SystemEvent.content must be at most {CONTENT_MAX} characters")

    @classmethod
    def truncated(cls, title: str, content: str = "") -> SystemEvent:
        """Build from text we do not control (meter output), cutting it to the store's limits."""
        title = title.strip() or "Event"
        if len(title) > TITLE_MAX:
            title = title[: TITLE_MAX - 3] + "..."
        if len(content) > CONTENT_MAX:
            content = content[: CONTENT_MAX - 3] + "..."
        return cls(title, content)

    def as_dict(self) -> dict:
        return {"title": self.title, "content": self.content}


@dataclass(frozen=True)
class PollResult:
    """Everything one task call produced."""

    readings: tuple[Reading, ...] = ()
    events: tuple[SystemEvent, ...] = ()

    def __add__(self, other: PollResult) -> PollResult:
        return PollResult(self.readings + other.readings, self.events + other.events)

    def as_dict(self) -> dict:
        return {"readings": [r.as_dict() for r in self.readings],
                "events": [e.as_dict() for e in self.events]}


# Units of quantities a current transformer scales, a voltage transformer scales, and both scale
# (power and energy): a meter behind transformers reports secondary values.
_CT_UNITS = {"a", "ma", "ka"}
_VT_UNITS = {"v", "kv", "mv"}
_POWER_ENERGY_UNITS = {"w", "kw", "mw", "var", "kvar", "mvar", "va", "kva", "mva",
                       "wh", "kwh", "mwh", "varh", "kvarh", "mvarh", "vah", "kvah", "mvah"}


def transformer_factor(unit: str | None, ct_ratio: str | None, vt_ratio: str | None) -> Decimal:
    """What a value in `unit` is multiplied by to be a primary value."""
    u = (unit or "").strip().lower()
    ct = Decimal(ct_ratio) if ct_ratio else Decimal(1)
    vt = Decimal(vt_ratio) if vt_ratio else Decimal(1)
    if u in _CT_UNITS:
        return ct
    if u in _VT_UNITS:
        return vt
    if u in _POWER_ENERGY_UNITS:
        return ct * vt
    return Decimal(1)


def apply_transformer_ratios(result: PollResult, *, ct_ratio: str | None,
                             vt_ratio: str | None) -> PollResult:
    """Readings scaled to primary values by the meter's CT/VT ratios (exact, in Decimal);
    unchanged when the meter has neither."""
    if not ct_ratio and not vt_ratio:
        return result
    scaled = []
    for reading in result.readings:
        factor = transformer_factor(reading.unit, ct_ratio, vt_ratio)
        if factor != 1:
            reading = Reading(reading.series, reading.timestamp,
                              decimal_string(Decimal(reading.value) * factor), reading.unit)
        scaled.append(reading)
    return PollResult(tuple(scaled), result.events)
