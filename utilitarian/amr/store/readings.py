"""Readings and system events in the store: idempotent commits on (meter, series, timestamp), staging
for unknown meters, rejection of series a meter's config does not allow, promotion, tail and export.

A redelivered commit changes nothing. A different value for an existing key replaces it and leaves a
"Reading value changed" event, so a meter that re-reports history differently is visible.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Iterator, Sequence

from utilitarian.amr.model import MeterReading, MeterSystemEvent, StagedMeterReading, event_id, iso_utc

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
TITLE_MAX, CONTENT_MAX = 50, 500


@dataclass(frozen=True)
class CommitResult:
    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    staged: int = 0
    rejected: int = 0
    accepted: tuple[MeterReading, ...] = ()            # stored now with exactly this value
    written: tuple[MeterReading, ...] = ()             # of those, inserted or changed by this commit
    events: tuple[MeterSystemEvent, ...] = field(default=(), repr=False)


def _same(a: str, b: str) -> bool:
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a == b


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def log_commit(result: CommitResult) -> CommitResult:
    if result.changed or result.rejected:
        log.info("commit: %d readings changed value, %d rejected (system events recorded)",
                 result.changed, result.rejected)
    return result


def _stamper(backend):
    """`backend.ts`, remembered for the commit: a group's readings share a few timestamps (the
    round's slot), and formatting one is most of what a reading costs it."""
    texts: dict = {}

    def stamp(moment):
        text = texts.get(moment)
        if text is None:
            text = texts[moment] = backend.ts(moment)
        return text
    return stamp


MAX_PARAMS = 900  # per statement: SQLite before 3.32 allows 999


def _existing_values(tx, wanted: list[tuple[int, dict]]) -> dict[tuple, str]:
    """(meter id, series, stored ts) -> value of the readings stored already under the keys of
    `wanted` [(meter id, {(series, ts): reading})]. Every key column is in the WHERE clause, so the
    planner stays on the primary key (the ts index alone would scan every reading of the round, as
    they all carry the round's slot). The meters of a group whose keys form (nearly) a full cross
    product, a round's usual shape, are asked in one statement; others one meter at a time, so a
    mixed group never probes many keys nobody asked for. The ts coming back is the text or time
    asked for (equal, and equal in hash), so no key is formatted again."""
    out: dict[tuple, str] = {}
    if not wanted:
        return out
    series = sorted({k[0] for _, keys in wanted for k in keys})
    stamps = sorted({k[1] for _, keys in wanted for k in keys})
    asked = sum(len(keys) for _, keys in wanted)
    if len(wanted) * len(series) * len(stamps) <= 2 * asked and len(series) + len(stamps) <= MAX_PARAMS // 2:
        batches = [(sorted(mid for mid, _ in wanted), series, stamps)]
    else:
        batches = [([mid], sorted({k[0] for k in keys}), sorted({k[1] for k in keys})) for mid, keys in wanted]
    for mids, names, times in batches:
        for t in range(0, len(times), 400):
            some = times[t:t + 400]
            step = max(1, MAX_PARAMS - len(names) - len(some))
            for m in range(0, len(mids), step):
                chunk = mids[m:m + step]
                for mid, name, ts, value in tx.all(
                        f"SELECT meter_id, series, ts, value FROM meter_reading WHERE meter_id IN "
                        f"({','.join('?' * len(chunk))}) AND series IN ({','.join('?' * len(names))}) "
                        f"AND ts IN ({','.join('?' * len(some))})", [*chunk, *names, *some]):
                    out[(mid, name, ts)] = value
    return out

class ReadingStore:
    """Mixin of Store."""

    backend = None

    def _write(self, work):  # Store replaces this with its group committer
        with self.backend.transaction(write=True) as tx:
            return work(tx)

    def commit_readings(self, readings: Sequence[MeterReading], *, now: dt.datetime | None = None,
                        publish_as: str | None = None) -> CommitResult:
        """Store a batch in one transaction; the events it produced are stored with it. With
        `publish_as` (the committing task's id), the readings stored now also go to the publish
        outbox in that transaction (see outbox.py)."""
        now = now or dt.datetime.now(UTC)

        def work(tx) -> CommitResult:
            result = self._commit(tx, readings, now)
            self._insert_events(tx, result.events, now)
            if publish_as is not None:
                # what this commit wrote: an unchanged reading was published when it was written
                self._enqueue_publish(tx, publish_as, result.written, now)
            return result

        return log_commit(self._write(work))

    def _commit(self, tx, readings: Sequence[MeterReading], now: dt.datetime,
                *, staged_ok: bool = True) -> CommitResult:
        b = self.backend
        names = sorted({r.meter for r in readings})
        meters: dict[str, tuple[int, frozenset[str]]] = {}
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            rows = tx.all("SELECT m.name, m.id, m.config_id FROM meter_device m WHERE m.name IN "
                          f"({','.join('?' * len(chunk))})", chunk)
            allowed = self._series_of_configs(tx, [r[2] for r in rows])
            for name, mid, cid in rows:
                meters[name] = (mid, frozenset(allowed.get(cid, ())))
        staged: list[MeterReading] = []
        rejected: dict[str, list[MeterReading]] = {}
        by_meter: dict[str, dict[tuple[str, object], MeterReading]] = {}
        stamp = _stamper(b)
        for r in readings:
            known = meters.get(r.meter)
            if known is None:
                staged.append(r)
            elif known[1] and r.series not in known[1]:
                rejected.setdefault(r.meter, []).append(r)
            else:
                # the last of duplicates inside one batch wins, like a later commit would
                by_meter.setdefault(r.meter, {})[(r.series, stamp(r.timestamp))] = r
        inserts, updates, accepted, written, events = [], [], [], [], []
        unchanged = 0
        existing = _existing_values(tx, [(meters[m][0], wanted) for m, wanted in by_meter.items()])
        committed = b.ts(now)
        for meter, wanted in by_meter.items():
            mid = meters[meter][0]
            for key, r in wanted.items():
                old = existing.get((mid, *key))
                if old is None:
                    inserts.append((mid, r.series, key[1], r.value, r.unit, committed))
                elif _same(old, r.value):
                    unchanged += 1
                else:
                    updates.append((r.value, r.unit, committed, mid, r.series, key[1]))
                    events.append(MeterSystemEvent(
                        event_id("changed", meter, r.series, iso_utc(r.timestamp), r.value), meter,
                        "Reading value changed",
                        _clip(f"{r.series} at {iso_utc(r.timestamp)}: {old} replaced by {r.value}", CONTENT_MAX),
                        now))
                    accepted.append(r)
                    written.append(r)
                    continue
                accepted.append(r)
                if old is None:
                    written.append(r)
        # DO NOTHING: a concurrent commit of the same key on PostgreSQL wins, never a duplicate.
        tx.executemany("INSERT INTO meter_reading (meter_id, series, ts, value, unit, committed_at) "
                       "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id, series, ts) DO NOTHING", inserts)
        tx.executemany("UPDATE meter_reading SET value = ?, unit = ?, committed_at = ? "
                       "WHERE meter_id = ? AND series = ? AND ts = ?", updates)
        if staged and staged_ok:
            tx.executemany("INSERT INTO staged_meter_reading (meter_name, series, ts, value, unit, received_at) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (meter_name, series, ts) DO UPDATE SET "
                           "value = excluded.value, unit = excluded.unit",
                           [(r.meter, r.series, stamp(r.timestamp), r.value, r.unit, committed) for r in staged])
        for meter, rows in rejected.items():
            series = sorted({r.series for r in rows})
            stamps = sorted({iso_utc(r.timestamp) for r in rows})
            events.append(MeterSystemEvent(
                event_id("rejected", meter, ",".join(series), ",".join(stamps)), meter,
                "Readings rejected",
                _clip(f"{len(rows)} readings of series not allowed by the meter's config: "
                      f"{', '.join(series)} (at {stamps[0]})", CONTENT_MAX), now))
        return CommitResult(len(inserts), len(updates), unchanged, len(staged) if staged_ok else 0,
                            sum(len(v) for v in rejected.values()), tuple(accepted), tuple(written),
                            tuple(events))

    def save_events(self, events: Sequence[MeterSystemEvent], *, now: dt.datetime | None = None) -> int:
        """Store events; an event id seen before is skipped. Returns how many were new."""
        now = now or dt.datetime.now(UTC)
        return self._write(lambda tx: self._insert_events(tx, events, now))

    def _insert_events(self, tx, events: Sequence[MeterSystemEvent], now: dt.datetime) -> int:
        if not events:
            return 0
        b = self.backend
        ids = sorted({e.id for e in events})
        seen: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            seen.update(r[0] for r in tx.all(
                f"SELECT id FROM meter_system_event WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        names = sorted({e.meter for e in events})
        meter_ids: dict[str, int] = {}
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            meter_ids.update({n: i for n, i in tx.all(
                f"SELECT name, id FROM meter_device WHERE name IN ({','.join('?' * len(chunk))})", chunk)})
        rows = {}
        for e in events:
            if e.id not in seen:
                rows[e.id] = (e.id, e.meter, meter_ids.get(e.meter), _clip(e.title, TITLE_MAX),
                              _clip(e.content or "", CONTENT_MAX), b.ts(e.timestamp or now))
        tx.executemany("INSERT INTO meter_system_event (id, meter_name, meter_id, title, content, ts) "
                       "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", list(rows.values()))
        return len(rows)

    def promote_staged(self, meters: Sequence[str] | None = None, *, batch_size: int = 5000,
                       now: dt.datetime | None = None, publish_as: str | None = None) -> CommitResult:
        """Move up to `batch_size` staged readings of meters that now exist (all of them, or those
        named in `meters`, however many) into the readings, in one transaction; with `publish_as`
        they go to the publish outbox in that transaction too (the staged rows are gone after it,
        so nothing else could tell a retry what is still to publish)."""
        now = now or dt.datetime.now(UTC)
        b = self.backend
        select = ("SELECT s.meter_name, s.series, s.ts, s.value, s.unit FROM staged_meter_reading s "
                  "JOIN meter_device m ON m.name = s.meter_name")
        with b.transaction(write=True) as tx:
            rows: list[tuple] = []
            if meters:
                # in chunks: a statement has a bounded number of parameters, an import does not
                names = sorted(set(meters))
                for start in range(0, len(names), 500):
                    if len(rows) >= batch_size:
                        break
                    chunk = names[start:start + 500]
                    rows += tx.all(select + f" WHERE s.meter_name IN ({','.join('?' * len(chunk))}) "
                                   f"ORDER BY s.meter_name, s.ts LIMIT {int(batch_size) - len(rows)}", chunk)
            else:
                rows = tx.all(select + f" ORDER BY s.meter_name, s.ts LIMIT {int(batch_size)}")
            readings = [MeterReading(m, s, b.from_ts(ts), v, u) for m, s, ts, v, u in rows]
            result = self._commit(tx, readings, now, staged_ok=False)
            self._insert_events(tx, result.events, now)
            if publish_as is not None:
                self._enqueue_publish(tx, publish_as, result.written, now)
            tx.executemany("DELETE FROM staged_meter_reading WHERE meter_name = ? AND series = ? AND ts = ?",
                           [(m, s, ts) for m, s, ts, _, _ in rows])
        return result

    def staged_meter_names(self) -> list[str]:
        with self.backend.transaction() as tx:
            return [r[0] for r in tx.all("SELECT DISTINCT s.meter_name FROM staged_meter_reading s "
                                         "JOIN meter_device m ON m.name = s.meter_name ORDER BY 1")]

    def list_staged(self, limit: int = 100) -> list[StagedMeterReading]:
        b = self.backend
        with b.transaction() as tx:
            rows = tx.all("SELECT meter_name, series, ts, value, unit, received_at FROM staged_meter_reading "
                          f"ORDER BY received_at DESC LIMIT {int(limit)}")
        return [StagedMeterReading(m, s, b.from_ts(t), v, u, b.from_ts(r)) for m, s, t, v, u, r in rows]

    def tail_readings(self, *, meter: str | None = None, limit: int = 20,
                      after: dt.datetime | None = None) -> list[tuple[MeterReading, dt.datetime]]:
        """Latest committed readings (reading, committed_at), oldest first."""
        b = self.backend
        where, params = [], []
        if meter:
            where.append("m.name = ?")
            params.append(meter)
        if after is not None:
            where.append("r.committed_at > ?")
            params.append(b.ts(after))
        sql = ("SELECT m.name, r.series, r.ts, r.value, r.unit, r.committed_at FROM meter_reading r "
               "JOIN meter_device m ON m.id = r.meter_id" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY r.committed_at DESC, m.name DESC, r.series DESC LIMIT {int(limit)}")
        with b.transaction() as tx:
            rows = tx.all(sql, params)
        return [(MeterReading(m, s, b.from_ts(t), v, u), b.from_ts(c)) for m, s, t, v, u, c in reversed(rows)]

    def iter_readings(self, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                      meter: str | None = None, batch: int = 5000) -> Iterator[MeterReading]:
        """Every reading in [since, until) ordered by (timestamp, meter, series), fetched in pages."""
        b = self.backend
        last: tuple | None = None
        while True:
            where, params = [], []
            if since is not None:
                where.append("r.ts >= ?")
                params.append(b.ts(since))
            if until is not None:
                where.append("r.ts < ?")
                params.append(b.ts(until))
            if meter:
                where.append("m.name = ?")
                params.append(meter)
            if last is not None:  # keyset paging: stable and cheap however far the export has got
                where.append("(r.ts > ? OR (r.ts = ? AND (m.name > ? OR (m.name = ? AND r.series > ?))))")
                params += [last[0], last[0], last[1], last[1], last[2]]
            sql = ("SELECT r.ts, m.name, r.series, r.value, r.unit FROM meter_reading r "
                   "JOIN meter_device m ON m.id = r.meter_id" + (" WHERE " + " AND ".join(where) if where else "")
                   + f" ORDER BY r.ts, m.name, r.series LIMIT {int(batch)}")
            with b.transaction() as tx:
                rows = tx.all(sql, params)
            for ts, m, s, v, u in rows:
                yield MeterReading(m, s, b.from_ts(ts), v, u)
            if len(rows) < batch:
                return
            last = rows[-1][:3]

    def count_readings(self, meter: str | None = None) -> int:
        with self.backend.transaction() as tx:
            if meter:
                return int(tx.scalar("SELECT count(*) FROM meter_reading r JOIN meter_device m "
                                     "ON m.id = r.meter_id WHERE m.name = ?", (meter,), 0))
            return int(tx.scalar("SELECT count(*) FROM meter_reading", default=0))

    def iter_events(self, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                    meter: str | None = None, batch: int = 5000) -> Iterator[MeterSystemEvent]:
        """Every event in [since, until) ordered by (timestamp, id), fetched in pages (`readings
        events --format csv|json`, like iter_readings for `readings export`)."""
        b = self.backend
        last: tuple | None = None
        while True:
            where, params = [], []
            for clause, value in (("ts >= ?", since), ("ts < ?", until)):
                if value is not None:
                    where.append(clause)
                    params.append(b.ts(value))
            if meter:
                where.append("meter_name = ?")
                params.append(meter)
            if last is not None:  # keyset paging, as iter_readings
                where.append("(ts > ? OR (ts = ? AND id > ?))")
                params += [last[0], last[0], last[1]]
            with b.transaction() as tx:
                rows = tx.all("SELECT id, meter_name, title, content, ts FROM meter_system_event"
                              + (" WHERE " + " AND ".join(where) if where else "")
                              + f" ORDER BY ts, id LIMIT {int(batch)}", params)
            for i, m, t, c, ts in rows:
                yield MeterSystemEvent(i, m, t, c, b.from_ts(ts))
            if len(rows) < batch:
                return
            last = (rows[-1][4], rows[-1][0])

    def list_events(self, *, meter: str | None = None, limit: int = 100) -> list[MeterSystemEvent]:
        b = self.backend
        where, params = "", []
        if meter:
            where, params = " WHERE meter_name = ?", [meter]
        with b.transaction() as tx:
            rows = tx.all("SELECT id, meter_name, title, content, ts FROM meter_system_event" + where +
                          f" ORDER BY ts DESC, id LIMIT {int(limit)}", params)
        return [MeterSystemEvent(i, m, t, c, b.from_ts(ts)) for i, m, t, c, ts in rows]
