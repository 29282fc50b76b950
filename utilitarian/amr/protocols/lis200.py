"""LIS-200 (Elster EK2x0 volume converters), the 62056-21 programming-mode dialect: single values,
archives read in R3 partial blocks, the device clock, and locks (a key written to the lock, not P1).

Archive rows become timestamped readings using the control position: the 1-based column that both
selects the range (from/to) and holds the row's timestamp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo

from utilitarian.amr.errors import (MeterAuthenticationError, MeterChecksumError, MeterError,
                                    MeterProtocolError, MeterUnsupported)
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session
from utilitarian.amr.protocols.iec_datasets import DataValue, parse_data_lines
from utilitarian.amr.protocols.local_time import LocalStamp, place_ascending
from utilitarian.amr.readings import Reading

TIME_FORMAT = "%Y-%m-%d,%H:%M:%S"
TIME_ADDRESS = "1:400.0"
# lock name -> (status address, key address); status reads 1 when open, writing 0 closes it.
LOCKS = {"supplier": ("3:170", "3:171"), "customer": ("4:170", "4:171")}

# Error answers "#dddd" (Elster LIS-200 protocol description, list of error messages).
LIS_ERRORS: dict[int, tuple[type[MeterError], str]] = {
    1: (MeterUnsupported, "unknown address"),
    2: (MeterUnsupported, "object not available"),
    3: (MeterUnsupported, "entity for object not available"),
    4: (MeterUnsupported, "unknown attribute"),
    5: (MeterUnsupported, "attribute for object not available"),
    6: (MeterProtocolError, "value outside of allowed range"),
    9: (MeterProtocolError, "write on constant not executable"),
    11: (MeterProtocolError, "no input allowed"),
    13: (MeterProtocolError, "wrong input"),
    14: (MeterProtocolError, "unknown units code"),
    17: (MeterAuthenticationError, "wrong access code"),
    18: (MeterAuthenticationError, "no read authorization (lock closed)"),
    19: (MeterAuthenticationError, "no write authorization (lock closed)"),
    20: (MeterAuthenticationError, "function is locked"),
    100: (MeterUnsupported, "archive number not available"),
    101: (MeterUnsupported, "value position not available"),
    103: (MeterProtocolError, "archive empty"),
    104: (MeterProtocolError, "lower limit (from) not found"),
    105: (MeterProtocolError, "upper limit (to) not found"),
    108: (MeterProtocolError, "too many archives open"),
    109: (MeterProtocolError, "archive entry overwritten while reading"),
    110: (MeterChecksumError, "CRC error in archive record"),
    180: (MeterProtocolError, "source not allowed"),
    200: (MeterProtocolError, "syntax error in telegram"),
    201: (MeterAuthenticationError, "wrong password in telegram"),
    222: (MeterProtocolError, "EEPROM read error"),
    223: (MeterProtocolError, "EEPROM write error"),
    249: (MeterProtocolError, "counter reading cannot be changed"),
}
NO_ROWS = {103, 104, 105}  # an empty range is an empty result, not a failure
_ERROR = re.compile(r"\s*#(\d{1,4})\s*\Z")


def lis_error_code(text: str) -> int | None:
    match = _ERROR.match(text)
    return int(match.group(1)) if match else None


def check_lis_answer(text: str, what: str) -> None:
    """Raise the typed error for a "#dddd" answer; do nothing for a value."""
    code = lis_error_code(text)
    if code is None:
        return
    cls, meaning = LIS_ERRORS.get(code, (MeterProtocolError, "unknown error"))
    raise cls(f"{what}: LIS-200 error #{code:04d} ({meaning})")


def format_lis_time(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime(TIME_FORMAT)


# Devices that keep summer time may append the season to a time value: S summer, W winter.
_DST_FLAGS = {"S": True, "W": False}


def parse_lis_local(text: str) -> LocalStamp:
    """A device-local "YYYY-MM-DD,hh:mm:ss[,S|W]" with its DST flag, if the device gave one."""
    body, dst = text.strip(), None
    if len(body) > 2 and body[-2] == "," and body[-1].upper() in _DST_FLAGS:
        body, dst = body[:-2], _DST_FLAGS[body[-1].upper()]
    try:
        return LocalStamp(datetime.strptime(body, TIME_FORMAT), dst)
    except ValueError:
        raise MeterProtocolError(f"not a LIS-200 time: {text[:30]!r}") from None


def parse_lis_time(text: str, tz: tzinfo) -> datetime:
    """A device-local time value as an aware UTC datetime (a time in the repeated autumn hour
    without a DST flag is taken as its first occurrence: one value has no row order to go by)."""
    (instant,) = place_ascending([parse_lis_local(text)], tz)
    if instant is None:
        raise MeterProtocolError(f"LIS-200 time {text[:30]!r} does not exist in the device's zone "
                                 "(inside a spring-forward gap)")
    return instant


@dataclass(frozen=True)
class ArchiveColumns:
    addresses: tuple[str, ...]
    units: tuple[str | None, ...]


@dataclass(frozen=True)
class ArchiveData:
    readings: tuple[Reading, ...]
    rows: int
    skipped_rows: int


def archive_readings(rows: list[tuple[DataValue, ...]], columns: ArchiveColumns, *,
                     control_position: int, tz: tzinfo,
                     series: dict[str, str] | None = None) -> ArchiveData:
    """Readings of archive rows. With `series` ({column address: series name}) only those columns
    are kept; without it every column that has a unit (a physical quantity, not a counter,
    status or CRC) is kept under its address."""
    index = control_position - 1
    readings: list[Reading] = []
    stamps: list[LocalStamp | None] = []
    for row in rows:
        stamp = None
        if len(row) == len(columns.addresses) and index < len(row):
            try:
                stamp = parse_lis_local(row[index].raw)
            except MeterProtocolError:
                pass
        stamps.append(stamp)
    # Archive rows come oldest first: the row order places the repeated autumn hour's times
    # where the device gave no DST flag (two rows must never collide on one key).
    instants = place_ascending(stamps, tz)
    skipped = 0
    for row, stamp in zip(rows, instants):
        if stamp is None:
            skipped += 1
            continue
        for column, value in enumerate(row):
            if column == index:
                continue
            address = columns.addresses[column]
            unit = value.unit or columns.units[column]
            name = series.get(address) if series is not None else (address if unit else None)
            number = value.number
            if name and number is not None:
                readings.append(Reading(name, stamp, number, unit))
    return ArchiveData(tuple(readings), len(rows), skipped)


class Lis200Client:
    """LIS-200 operations on an open programming-mode session (no P1: access is by locks)."""

    def __init__(self, session: Iec62056Session, tz: tzinfo):
        self.session = session
        self.tz = tz
        session.answer_check = check_lis_answer

    def sign_on(self) -> str:
        return self.session.enter_programming(password=None)

    def read_value(self, address: str) -> DataValue:
        return self.session.read(address, "1")[0].value

    def read_time(self, address: str = TIME_ADDRESS) -> datetime:
        return parse_lis_time(self.read_value(address).raw, self.tz)

    def write_time(self, moment: datetime, address: str = TIME_ADDRESS) -> None:
        self.session.write(address, format_lis_time(moment, self.tz))

    def open_lock(self, lock: str, key: str) -> None:
        """Write the key to the lock and check that it opened. The key is never logged."""
        status, key_address = LOCKS[lock]
        try:
            self.session.write(key_address, key)
        except MeterAuthenticationError:
            raise MeterAuthenticationError(f"{self.session.where}: {lock} lock key refused") from None
        if self.read_value(status).raw.strip() != "1":
            raise MeterAuthenticationError(f"{self.session.where}: {lock} lock did not open")

    def close_lock(self, lock: str) -> None:
        self.session.write(LOCKS[lock][0], "0")

    def archive_columns(self, archive: int, control_position: int) -> ArchiveColumns:
        """Column sources (attribute 4) and units (attribute 3) of an archive."""
        params = f"{control_position};;;"
        addresses = self._single_row(f"{archive}:V.4", params)
        units = self._single_row(f"{archive}:V.3", params)
        if len(addresses) != len(units):
            raise MeterProtocolError(f"{self.session.where}: archive {archive} has "
                                     f"{len(addresses)} sources but {len(units)} units")
        return ArchiveColumns(tuple(v.raw.strip() for v in addresses),
                              tuple(v.raw.strip() or None for v in units))

    def _single_row(self, address: str, params: str) -> tuple[DataValue, ...]:
        sets = self.session.read(address, params)
        return tuple(v for s in sets for v in s.values)

    def archive_rows(self, archive: int, *, control_position: int, start: str = "", end: str = "",
                     rows_per_block: int = 10) -> list[tuple[DataValue, ...]]:
        """Rows of `archive` with the control column between `start` and `end` (device format,
        "" = open end), read as R3 partial blocks."""
        params = f"{control_position};{start};{end};{rows_per_block}"
        blocks = self.session.read_partial(f"{archive}:V.0", params)
        rows: list[tuple[DataValue, ...]] = []
        for block in blocks:
            for line in parse_data_lines(block):
                values = tuple(v for s in line for v in s.values)
                if len(values) == 1 and (code := lis_error_code(values[0].raw)) is not None:
                    if code in NO_ROWS:
                        continue
                    check_lis_answer(values[0].raw, f"{self.session.where}: archive {archive}")
                rows.append(values)
        return rows
