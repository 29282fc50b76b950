"""The publish outbox: committed readings that still have to reach the exchange and the webhook.

A commit (or a promotion) writes its accepted readings here in the same transaction as the readings
themselves, keyed by its owner (the id of the task message doing the commit). The task then sends
the publish tasks and, once the broker confirmed them, deletes the rows. Whatever fails in between
(the publish, the store, the process) leaves the rows: the task's retry or redelivery (same id)
sends them again, and `cleanup.publish_outbox` sends rows whose owner gave up. At least once.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Sequence

from utilitarian.amr.model import MeterReading

UTC = dt.timezone.utc
ROWS_PER_ENTRY = 500  # readings per outbox row = per publish task (keeps messages small)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    owner: str
    readings: list  # wire form: [{meter, series, timestamp, value, unit}]


class OutboxStore:
    """Mixin of Store."""

    backend = None

    def _enqueue_publish(self, tx, owner: str, readings: Sequence[MeterReading], now: dt.datetime) -> int:
        """Inside the caller's transaction: remember `readings` for publishing."""
        from utilitarian.amr.publish import reading_to_wire

        if not readings:
            return 0
        wire = [reading_to_wire(r) for r in readings]
        rows = [(owner, json.dumps(wire[i:i + ROWS_PER_ENTRY], separators=(",", ":")), self.backend.ts(now))
                for i in range(0, len(wire), ROWS_PER_ENTRY)]
        tx.executemany("INSERT INTO publish_outbox (owner, readings, created_at) VALUES (?, ?, ?)", rows)
        return len(rows)

    def _enqueue_publish_many(self, tx, owned: Sequence[tuple[str, Sequence[MeterReading]]],
                              now: dt.datetime) -> int:
        """`_enqueue_publish` for many owners in one statement (a group of polls, one owner each)."""
        from utilitarian.amr.publish import reading_to_wire

        created = self.backend.ts(now)
        rows = [(owner, json.dumps([reading_to_wire(r) for r in readings[i:i + ROWS_PER_ENTRY]],
                                   separators=(",", ":")), created)
                for owner, readings in owned for i in range(0, len(readings), ROWS_PER_ENTRY)]
        if rows:
            tx.executemany("INSERT INTO publish_outbox (owner, readings, created_at) VALUES (?, ?, ?)", rows)
        return len(rows)

    def outbox_of_owners(self, owners: Sequence[str]) -> list[OutboxEntry]:
        """`outbox_of` for many owners at once."""
        owners = list(dict.fromkeys(owners))
        entries: list[OutboxEntry] = []
        with self.backend.transaction() as tx:
            for start in range(0, len(owners), 500):
                chunk = owners[start:start + 500]
                rows = tx.all("SELECT id, owner, readings FROM publish_outbox WHERE owner IN "
                              f"({','.join('?' * len(chunk))}) ORDER BY id", chunk)
                entries += [OutboxEntry(int(i), o, json.loads(r)) for i, o, r in rows]
        return entries

    def outbox_of(self, owner: str) -> list[OutboxEntry]:
        """What `owner` committed and has not published yet (left by a failed earlier attempt too)."""
        with self.backend.transaction() as tx:
            rows = tx.all("SELECT id, owner, readings FROM publish_outbox WHERE owner = ? ORDER BY id", (owner,))
        return [OutboxEntry(int(i), o, json.loads(r)) for i, o, r in rows]

    def stranded_outbox(self, *, older_than: dt.datetime, limit: int = 100) -> list[OutboxEntry]:
        """Rows whose owner did not publish them in time (its message was dead-lettered, or it is
        still retrying: publishing them again is allowed, delivery is at least once)."""
        b = self.backend
        with b.transaction() as tx:
            rows = tx.all("SELECT id, owner, readings FROM publish_outbox WHERE created_at < ? "
                          f"ORDER BY id LIMIT {int(limit)}", (b.ts(older_than),))
        return [OutboxEntry(int(i), o, json.loads(r)) for i, o, r in rows]

    def delete_outbox(self, ids: Sequence[int]) -> None:
        """After the broker confirmed the publish tasks of these rows."""
        ids = list(ids)
        if not ids:
            return

        def work(tx) -> None:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                tx.execute(f"DELETE FROM publish_outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)

        self._write(work)

    def outbox_size(self) -> int:
        with self.backend.transaction() as tx:
            return int(tx.scalar("SELECT count(*) FROM publish_outbox", default=0))
