"""Meter-local wall-clock times to UTC instants, for interval data (archive rows, database records,
load-profile entries) that a meter stamps in its own zone.

A local time in the repeated autumn hour names two instants and one in the spring gap names none.
The meter's own DST flag decides where it gives one; otherwise the order of the rows does: in an
ascending series, a local time that is not after the previous row's instant is the second occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

UTC = timezone.utc


@dataclass(frozen=True)
class LocalStamp:
    """A naive local time and the meter's DST flag for it: True (summer time), False (standard
    time) or None (the meter did not say)."""

    local: datetime
    dst: bool | None = None


def is_nonexistent(local: datetime, tz: tzinfo) -> bool:
    """True for a wall-clock time skipped by a spring-forward transition."""
    moment = local.replace(tzinfo=tz, fold=0)
    return moment.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != local


def place_ascending(stamps: list[LocalStamp | None], tz: tzinfo) -> list[datetime | None]:
    """UTC instants of a series in ascending (archive) order; None for a missing stamp or one
    that cannot exist (a time inside the spring gap)."""
    out: list[datetime | None] = []
    previous: datetime | None = None
    for stamp in stamps:
        if stamp is None or is_nonexistent(stamp.local, tz):
            out.append(None)
            continue
        first = stamp.local.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = stamp.local.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if first == second:
            instant = first
        elif stamp.dst is True:
            instant = first       # summer time: the first pass through the repeated hour
        elif stamp.dst is False:
            instant = second
        elif previous is not None and first <= previous:
            instant = second      # the row before it already used (or passed) the first pass
        else:
            instant = first
        out.append(instant)
        previous = instant
    return out


def place_descending(stamps: list[LocalStamp | None], tz: tzinfo) -> list[datetime | None]:
    """The same for a series read newest first (Corus databases)."""
    return list(reversed(place_ascending(list(reversed(stamps)), tz)))
