"""IEC 62056-21 load profiles (P.01, P.02) and the event log (P.98) in the VDEW layout, pure:
`P.01(ZYYMMDDhhmm)(SS)(RP)(z)(KZ1)(E1)...` header lines, each followed by one line of z values per
registration period; a new header wherever the status changes, after a gap or a clock change.

Z is the season (0 standard time, 1 summer time, 2 UTC); SS the status byte of the intervals under
that header. Entries become readings at their own instants; status flags, gaps and clock changes
become events. Malformed input raises MeterProtocolError (never a bogus reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.protocols.iec_datasets import DataSet
from utilitarian.amr.protocols.local_time import LocalStamp, place_ascending
from utilitarian.amr.readings import PollResult, Reading, SystemEvent, parse_number

UTC = timezone.utc
# Status bits of the VDEW load profile (DIN 43863-3); others are shown in hex.
STATUS_BITS = {0x80: "power failure", 0x40: "reset", 0x20: "clock adjusted", 0x10: "value disturbed",
               0x08: "summer time", 0x04: "parameter changed", 0x02: "clock invalid", 0x01: "fatal error"}
INFORMATIONAL = 0x08            # summer time is a season, not a fault


@dataclass(frozen=True)
class ProfileEntry:
    local: datetime
    season: str                 # "0", "1", "2" (UTC) or "" (not given)
    status: int
    values: tuple[tuple[str, str, str | None], ...]   # (channel code, decimal text, unit)


@dataclass
class LoadProfile:
    entries: list[ProfileEntry] = field(default_factory=list)
    gaps: list[tuple[datetime, datetime, int]] = field(default_factory=list)   # after, next, missing
    clock_changes: list[tuple[datetime, datetime]] = field(default_factory=list)


def parse_profile_time(text: str) -> tuple[datetime, str]:
    """"1250105121500" / "250105121500" / "2501051215" (+ optional season digit) -> local, season."""
    digits = text.strip()
    if not digits.isdigit() or len(digits) not in (10, 11, 12, 13):
        raise MeterProtocolError(f"load profile time {text[:20]!r} is not [Z]YYMMDDhhmm[ss]")
    season = ""
    if len(digits) in (11, 13):
        season, digits = digits[0], digits[1:]
        if season not in "012":
            raise MeterProtocolError(f"load profile time {text[:20]!r}: season {season!r} is not 0, 1 or 2")
    try:
        return datetime(2000 + int(digits[0:2]), int(digits[2:4]), int(digits[4:6]), int(digits[6:8]),
                        int(digits[8:10]), int(digits[10:12] or 0)), season
    except ValueError:
        raise MeterProtocolError(f"load profile time {text[:20]!r} is not a valid date") from None


def format_profile_time(local: datetime, season: str) -> str:
    return season + local.strftime("%y%m%d%H%M")


def _int(value: str, what: str, base: int = 10) -> int:
    try:
        return int(value.strip() or "0", base)
    except ValueError:
        raise MeterProtocolError(f"load profile {what} {value[:10]!r} is not a number") from None


def parse_load_profile(lines: list[list[DataSet]], address: str = "P.01") -> LoadProfile:
    profile = LoadProfile()
    channels: list[tuple[str, str | None]] = []
    period = timedelta(0)
    current: tuple[datetime, str, int] | None = None     # next entry's local time, season, status
    for line in lines:
        if not line:
            continue
        head = line[0]
        if head.address:
            if head.address != address:
                raise MeterProtocolError(f"load profile line for {head.address!r}, expected {address}")
            raw = [v.raw for v in head.values] + [v.raw for s in line[1:] for v in s.values]
            if len(raw) < 4:
                raise MeterProtocolError(f"{address} header with {len(raw)} fields")
            local, season = parse_profile_time(raw[0])
            status = _int(raw[1], "status", 16)
            minutes = _int(raw[2], "period")
            count = _int(raw[3], "channel count")
            if len(raw) != 4 + 2 * count or not 0 < minutes <= 1440:
                raise MeterProtocolError(f"{address} header: {count} channels but {len(raw) - 4} "
                                         f"codes and units, or a period of {minutes} min")
            channels = [(raw[4 + 2 * i].strip(), raw[5 + 2 * i].strip() or None) for i in range(count)]
            if profile.entries:
                last = profile.entries[-1]
                expected = last.local + period
                # Summer/standard time switches move the meter's time by an hour: no gap, no event.
                dst_switch = season != last.season and abs(local - expected) == timedelta(hours=1)
                if status & 0x20 or (local < expected and not dst_switch):
                    profile.clock_changes.append((last.local, local))
                elif local > expected and not dst_switch:
                    profile.gaps.append((last.local, local, int((local - expected) / period)))
            period = timedelta(minutes=minutes)
            current = (local, season, status)
            continue
        if current is None:
            raise MeterProtocolError(f"{address} values before any header")
        values = [v for s in line for v in s.values]
        if len(values) != len(channels):
            raise MeterProtocolError(f"{address} line with {len(values)} values for {len(channels)} channels")
        out = []
        for (code, unit), value in zip(channels, values):
            number = parse_number(value.raw)
            if number is None:
                raise MeterProtocolError(f"{address} value {value.raw[:20]!r} is not a number")
            out.append((code, number, value.unit or unit))
        local, season, status = current
        profile.entries.append(ProfileEntry(local, season, status, tuple(out)))
        current = (local + period, season, status)
    return profile


def flags(status: int) -> str:
    names = [name for bit, name in STATUS_BITS.items() if status & bit]
    return ", ".join(names) or f"{status:02X}"


def _instants(entries: list[ProfileEntry], tz: tzinfo) -> list[datetime | None]:
    stamps = [None if e.season == "2" else LocalStamp(e.local, {"1": True, "0": False}.get(e.season))
              for e in entries]
    placed = place_ascending(stamps, tz)
    return [e.local.replace(tzinfo=UTC) if e.season == "2" else p for e, p in zip(entries, placed)]


def profile_to_result(profile: LoadProfile, tz: tzinfo, *, low: datetime | None = None,
                      high: datetime | None = None) -> PollResult:
    """Readings at each entry's instant (UTC, kept between low and high); events for flagged
    intervals, gaps and clock changes."""
    readings, seen, flagged, skipped = [], set(), [], 0
    for entry, instant in zip(profile.entries, _instants(profile.entries, tz)):
        if instant is None or instant in seen:
            skipped += 1
            continue
        seen.add(instant)
        if (low and instant < low) or (high and instant > high):
            continue
        if entry.status & ~INFORMATIONAL:
            flagged.append(f"{instant.strftime('%Y-%m-%dT%H:%MZ')} {flags(entry.status & ~INFORMATIONAL)}")
        for code, value, unit in entry.values:
            readings.append(Reading(code, instant, value, unit))
    events = []
    if flagged:
        events.append(SystemEvent.truncated("Load profile status",
                                            f"{len(flagged)} intervals flagged: " + "; ".join(flagged)))
    for after, following, missing in profile.gaps:
        events.append(SystemEvent.truncated("Load profile gap", f"{missing} intervals missing after "
                                            f"{after:%Y-%m-%d %H:%M} (next {following:%Y-%m-%d %H:%M}, meter time)"))
    for before, after in profile.clock_changes:
        events.append(SystemEvent.truncated("Load profile clock change",
                                            f"meter time went from {before:%Y-%m-%d %H:%M} to {after:%Y-%m-%d %H:%M}"))
    if skipped:
        events.append(SystemEvent.truncated("Load profile entries skipped",
                                            f"{skipped} entries had a time that does not exist or repeats"))
    return PollResult(tuple(readings), tuple(events))


def event_log_to_events(lines: list[list[DataSet]], tz: tzinfo, address: str = "P.98") -> tuple[SystemEvent, ...]:
    """P.98 entries (`P.98(ZYYMMDDhhmmss)(SS)...`) as "Meter log" events."""
    out = []
    for line in lines:
        if not line or not line[0].address:
            continue
        if line[0].address != address or len(line[0].values) < 2:
            raise MeterProtocolError(f"event log line for {line[0].address!r}")
        local, season = parse_profile_time(line[0].values[0].raw)
        status = _int(line[0].values[1].raw, "status", 16)
        out.append(SystemEvent.truncated("Meter log", f"{local:%Y-%m-%d %H:%M:%S} (meter time"
                                         f"{', summer' if season == '1' else ''}): {flags(status)}"))
    return tuple(out)
