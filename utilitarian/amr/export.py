"""Readings and system events as CSV or JSON (`readings export`, `readings events`): one writer for
both, streamed row by row so an export of a year of readings never sits in memory."""

from __future__ import annotations

import csv
import json
from typing import IO, Iterable, Sequence

FORMATS = ("csv", "json")
READING_FIELDS = ("timestamp", "meter", "series", "value", "unit")
EVENT_FIELDS = ("timestamp", "meter", "title", "content", "id")


def reading_rows(readings) -> Iterable[tuple]:
    from utilitarian.amr.model import iso_utc

    for r in readings:
        yield iso_utc(r.timestamp), r.meter, r.series, r.value, r.unit or ""


def event_rows(events) -> Iterable[tuple]:
    from utilitarian.amr.model import iso_utc

    for e in events:
        yield iso_utc(e.timestamp) if e.timestamp else "", e.meter, e.title, e.content, e.id


def write_rows(out: IO[str], fmt: str, fields: Sequence[str], rows: Iterable[tuple]) -> int:
    """CSV with a header line, or a JSON array of objects keyed by `fields`; returns the row count.
    Values stay text (a reading's value is a decimal string: no float rounding on the way out)."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(fields)
        for row in rows:
            writer.writerow(row)
            count += 1
        return count
    if fmt != "json":
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out.write("[")
    for row in rows:
        out.write(("," if count else "") + "\n  " + json.dumps(dict(zip(fields, row)), ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count
