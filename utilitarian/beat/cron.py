"""Cron expressions evaluated in an entry's time zone, mapped to exact UTC slots.

DST rules (the same for every entry): a wall-clock time that occurs twice (autumn) fires once,
at its first occurrence; a wall-clock time that does not exist (spring) fires at the first
instant after the gap, unless another slot of the entry falls on that instant, in which case the
two are one slot. So `30 2 * * *` still runs on the spring-forward day (at 03:00), while an
hourly entry fires 23 times that day and 24 (not 25) on the autumn day.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Iterator

UTC = dt.timezone.utc
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def normalize(expr: str) -> str:
    text = " ".join(expr.split())
    return ALIASES.get(text.lower(), text)


def check_cron(expr: str) -> str | None:
    """Config check: an error text for an expression we cannot schedule, else None."""
    from croniter import croniter

    text = normalize(expr)
    if text.startswith("@"):
        return f"unknown alias {expr!r} (known: {', '.join(sorted(ALIASES))})"
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        return f"cron {expr!r} has {len(fields)} fields; expected 5 (minute hour day month weekday) or 6 (+ seconds)"
    try:
        valid = croniter.is_valid(text)
    except Exception:  # croniter raises assorted types for odd input
        valid = False
    if not valid:
        return f"invalid cron expression {expr!r}"
    try:  # is_valid accepts some expressions that never fire (e.g. 30 February)
        croniter(text, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except Exception as exc:
        return f"cron {expr!r} never fires: {exc}"
    return None


class CronSchedule:
    """The UTC slots of one cron expression in one time zone."""

    def __init__(self, expr: str, timezone: str = "UTC"):
        self.expr = normalize(expr)
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.is_utc = timezone in ("UTC", "Etc/UTC", "UTC0", "Zulu")

    def __repr__(self) -> str:
        return f"CronSchedule({self.expr!r}, {self.tz.key!r})"

    def slots(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Slots strictly after `after` (aware), in increasing UTC order, until the calendar ends
        (year 9999: croniter and datetime raise OverflowError past it; the iterator just stops)."""
        from croniter import croniter

        after = after.astimezone(UTC)
        try:
            wall_start = after.astimezone(self.tz).replace(tzinfo=None)
        except OverflowError:  # within a day of year 1 or 9999: no wall clock there
            return
        # Sub-second precision does not exist in cron; start from the whole second.
        it = croniter(self.expr, wall_start.replace(microsecond=0))
        last: dt.datetime | None = None
        while True:
            try:
                wall = it.get_next(dt.datetime)
                instant = self.instant_of(wall)
            except (OverflowError, ValueError):  # past 9999-12-31 (`schedule show --at 9999-...`)
                return
            if instant <= after or instant == last:
                continue
            last = instant
            yield instant

    def next_after(self, after: dt.datetime) -> dt.datetime:
        return next(self.slots(after))

    def slots_between(self, after: dt.datetime, until: dt.datetime, limit: int | None = None) -> list[dt.datetime]:
        """Slots in (after, until], at most `limit` of them (the earliest)."""
        out = []
        for slot in self.slots(after):
            if slot > until or (limit is not None and len(out) >= limit):
                break
            out.append(slot)
        return out

    def slots_before(self, until: dt.datetime, after: dt.datetime, limit: int | None = None) -> list[dt.datetime]:
        """The latest slots in (after, until], at most `limit` of them, in increasing order.

        Walks backwards, so catching up after a long outage costs `limit` steps, not one per
        slot since the outage began.
        """
        from croniter import croniter

        until = until.astimezone(UTC)
        after = after.astimezone(UTC)
        if until <= after or limit == 0:
            return []
        local = until.astimezone(self.tz)
        start = local.replace(tzinfo=None, microsecond=0)
        if local.fold:
            # `until` lies in the second pass of a repeated hour: wall times up to the end of that
            # hour map to their first occurrence, which is before `until`, so start there.
            first = local.replace(fold=0).astimezone(UTC)
            start += until - first
        # get_prev is strictly before its start; +1 s makes `start` itself a candidate.
        it = croniter(self.expr, start + dt.timedelta(seconds=1))
        out: list[dt.datetime] = []
        while limit is None or len(out) < limit:
            instant = self.instant_of(it.get_prev(dt.datetime))
            if instant > until or (out and instant == out[-1]):
                continue
            if instant <= after:
                break
            out.append(instant)
        out.reverse()
        return out

    def instant_of(self, wall: dt.datetime) -> dt.datetime:
        """The UTC instant a naive wall-clock time stands for, by the DST rules above."""
        if self.is_utc:
            return wall.replace(tzinfo=UTC)
        first = wall.replace(tzinfo=self.tz, fold=0)
        utc_first = first.astimezone(UTC)
        if utc_first.astimezone(self.tz).replace(tzinfo=None) == wall:
            return utc_first  # exists; for a repeated time this is its first occurrence
        return self._gap_end(wall)

    def _gap_end(self, wall: dt.datetime) -> dt.datetime:
        """First instant after the spring-forward gap that swallowed `wall`."""
        lo = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)  # read with the later offset
        hi = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)  # read with the earlier offset
        lo, hi = min(lo, hi), max(lo, hi)
        before = lo.astimezone(self.tz).utcoffset()
        while hi - lo > dt.timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            if mid.astimezone(self.tz).utcoffset() == before:
                lo = mid
            else:
                hi = mid
        return hi.replace(microsecond=0)
