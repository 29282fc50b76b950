"""Rounds, job runs and interface blocks in the store, plus the bounded deletes of retention.

A round's jobs are rows created "pending" when dispatched; each job's final outcome overwrites its
row, so progress is a GROUP BY. Interface blocks are one row per interface with a lease.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

from utilitarian.amr.model import AmrTaskRun, DispatchRound, Job

UTC = dt.timezone.utc


@dataclass(frozen=True)
class RoundCounts:
    round: DispatchRound
    done: int
    failed: int
    first_finished: dt.datetime | None
    last_finished: dt.datetime | None
    recent: int = 0                     # jobs finished within the rate window


class RunStore:
    """Mixin of Store."""

    backend = None

    def _write(self, work):  # Store replaces this with its group committer
        with self.backend.transaction(write=True) as tx:
            return work(tx)

    # --- rounds ----------------------------------------------------------------------------------
    def record_round(self, rnd: DispatchRound, jobs: Sequence[Job], *,
                     now: dt.datetime | None = None) -> list[Job]:
        """Create the round and its pending job rows; returns the jobs not yet published (all of
        them the first time, none when a previous dispatch of the same round completed)."""
        now = now or dt.datetime.now(UTC)
        b = self.backend
        with b.transaction(write=True) as tx:
            tx.execute("INSERT INTO amr_round (id, schedule, slot, jobs, dispatched_at, dispatch_seconds) "
                       "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING",
                       (rnd.id, rnd.schedule, b.ts(rnd.slot), 0, b.ts(rnd.dispatched_at)))
            if b.dialect == "postgresql":
                # Serialises two dispatches of one round (a duplicate fire around beat fail-over).
                tx.execute("SELECT id FROM amr_round WHERE id = ? FOR UPDATE", (rnd.id,))
            known = {job_id: bool(pub) for job_id, pub in tx.all(
                "SELECT job_id, published FROM amr_task_run WHERE round_id = ?", (rnd.id,))}
            tx.executemany("INSERT INTO amr_task_run (job_id, round_id, meter_name, amr_task, outcome, "
                           "created_at) VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT (job_id) DO NOTHING",
                           [(j.id, rnd.id, j.meter, j.amr_task, b.ts(now)) for j in jobs if j.id not in known])
            total = int(tx.scalar("SELECT count(*) FROM amr_task_run WHERE round_id = ?", (rnd.id,), 0))
            tx.execute("UPDATE amr_round SET jobs = ? WHERE id = ?", (total, rnd.id))
        return [j for j in jobs if not known.get(j.id, False)]

    def mark_published(self, job_ids: Sequence[str]) -> None:
        def work(tx) -> None:
            for start in range(0, len(job_ids), 900):
                chunk = list(job_ids[start:start + 900])
                tx.execute(f"UPDATE amr_task_run SET published = ? WHERE job_id IN ({','.join('?' * len(chunk))})",
                           [True, *chunk])

        self._write(work)  # shares a transaction with the commits running meanwhile

    def claim_continuation(self, round_id: str, at: dt.datetime) -> bool:
        """True for the one dispatch that should schedule the round's continuation at `at`."""
        b = self.backend

        def work(tx) -> bool:
            tx.execute("UPDATE amr_round SET continue_at = ? WHERE id = ? AND (continue_at IS NULL OR continue_at <> ?)",
                       (b.ts(at), round_id, b.ts(at)))
            return tx.rowcount == 1

        return self._write(work)

    def finish_dispatch(self, round_id: str, seconds: float) -> None:
        with self.backend.transaction(write=True) as tx:
            # accumulated: continuations and repeats of a dispatch add their (short) time
            tx.execute("UPDATE amr_round SET dispatch_seconds = dispatch_seconds + ? WHERE id = ?",
                       (float(seconds), round_id))

    def _round_from_row(self, row) -> DispatchRound:
        b = self.backend
        rid, schedule, slot, jobs, dispatched_at, seconds = row
        return DispatchRound(rid, schedule, b.from_ts(slot), int(jobs), b.from_ts(dispatched_at), float(seconds))

    def get_round(self, round_id: str) -> DispatchRound | None:
        with self.backend.transaction() as tx:
            row = tx.one("SELECT id, schedule, slot, jobs, dispatched_at, dispatch_seconds FROM amr_round "
                         "WHERE id = ?", (round_id,))
        return self._round_from_row(row) if row else None

    def round_counts(self, *, limit: int = 10, now: dt.datetime | None = None,
                     window: float = 120.0) -> list[RoundCounts]:
        """The `limit` most recently dispatched rounds with their finished counts."""
        now = now or dt.datetime.now(UTC)
        b = self.backend
        since = b.ts(now - dt.timedelta(seconds=window))
        with b.transaction() as tx:
            rounds = [self._round_from_row(r) for r in tx.all(
                "SELECT id, schedule, slot, jobs, dispatched_at, dispatch_seconds FROM amr_round "
                f"ORDER BY dispatched_at DESC, id LIMIT {int(limit)}")]
            out = []
            for rnd in rounds:
                counts = {o: (n, lo, hi) for o, n, lo, hi in tx.all(
                    "SELECT outcome, count(*), min(finished_at), max(finished_at) FROM amr_task_run "
                    "WHERE round_id = ? GROUP BY outcome", (rnd.id,))}
                recent = int(tx.scalar("SELECT count(*) FROM amr_task_run WHERE round_id = ? "
                                       "AND outcome <> 'pending' AND finished_at > ?", (rnd.id, since), 0))
                finished = [counts[o] for o in ("done", "failed") if o in counts]
                firsts = [b.from_ts(c[1]) for c in finished if c[1] is not None]
                lasts = [b.from_ts(c[2]) for c in finished if c[2] is not None]
                out.append(RoundCounts(rnd, counts.get("done", (0,))[0], counts.get("failed", (0,))[0],
                                       min(firsts) if firsts else None, max(lasts) if lasts else None,
                                       recent))
        return out

    # --- runs ------------------------------------------------------------------------------------
    def record_runs(self, runs: Sequence[AmrTaskRun], *, now: dt.datetime | None = None) -> None:
        """Store final outcomes. A "failed" never overwrites a "done" (a job that ran twice after a
        crash and failed the second time still read its meter)."""
        now = now or dt.datetime.now(UTC)
        b = self.backend
        rows = [(r.job_id, r.round_id, r.meter, r.amr_task, r.outcome, r.error, r.duration, r.attempts, True,
                 b.ts(now), b.ts(r.finished_at or now)) for r in runs]
        self._write(lambda tx: tx.executemany(
                "INSERT INTO amr_task_run (job_id, round_id, meter_name, amr_task, outcome, error, duration, "
                "attempts, published, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET outcome = excluded.outcome, error = excluded.error, "
                "duration = excluded.duration, attempts = excluded.attempts, finished_at = excluded.finished_at "
                "WHERE amr_task_run.outcome <> 'done' OR excluded.outcome = 'done'", rows))

    def get_run(self, job_id: str) -> AmrTaskRun | None:
        b = self.backend
        with b.transaction() as tx:
            row = tx.one("SELECT job_id, meter_name, amr_task, outcome, round_id, error, duration, attempts, "
                         "finished_at FROM amr_task_run WHERE job_id = ?", (job_id,))
        if row is None:
            return None
        return AmrTaskRun(row[0], row[1], row[2], row[3], row[4], row[5], row[6], int(row[7]), b.from_ts(row[8]))

    def list_runs(self, round_id: str) -> list[AmrTaskRun]:
        b = self.backend
        with b.transaction() as tx:
            rows = tx.all("SELECT job_id, meter_name, amr_task, outcome, round_id, error, duration, attempts, "
                          "finished_at FROM amr_task_run WHERE round_id = ? ORDER BY meter_name, amr_task",
                          (round_id,))
        return [AmrTaskRun(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), b.from_ts(r[8])) for r in rows]

    # --- interface blocks --------------------------------------------------------------------------
    def acquire_block(self, interface_id: int, holder: str, *, lease: float, now: float) -> bool:
        """Atomic: take the interface if free or its lease ran out. True when `holder` has it."""
        with self.backend.transaction(write=True) as tx:
            tx.execute("INSERT INTO interface_block (interface_id, holder, acquired_at, expires_at) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (interface_id) DO UPDATE SET holder = excluded.holder, "
                       "acquired_at = excluded.acquired_at, expires_at = excluded.expires_at "
                       "WHERE interface_block.expires_at < ? OR interface_block.holder = excluded.holder",
                       (interface_id, holder, now, now + lease, now))
            return tx.scalar("SELECT holder FROM interface_block WHERE interface_id = ?", (interface_id,)) == holder

    def take_over_block(self, interface_id: int, dead_holder: str, holder: str, *, lease: float,
                        now: float) -> bool:
        """Replace a holder known to be dead; fails if someone else replaced it first."""
        with self.backend.transaction(write=True) as tx:
            tx.execute("UPDATE interface_block SET holder = ?, acquired_at = ?, expires_at = ? "
                       "WHERE interface_id = ? AND holder = ?", (holder, now, now + lease, interface_id, dead_holder))
            return tx.rowcount == 1

    def block_holder(self, interface_id: int) -> tuple[str, float] | None:
        with self.backend.transaction() as tx:
            row = tx.one("SELECT holder, expires_at FROM interface_block WHERE interface_id = ?", (interface_id,))
        return (row[0], float(row[1])) if row else None

    def release_block(self, interface_id: int, holder: str) -> bool:
        with self.backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM interface_block WHERE interface_id = ? AND holder = ?", (interface_id, holder))
            return tx.rowcount == 1

    def release_stale_blocks(self, *, now: float) -> int:
        with self.backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM interface_block WHERE expires_at < ?", (now,))
            return max(0, tx.rowcount)

    # --- retention ---------------------------------------------------------------------------------
    _RETENTION = {
        "meter_reading": "ts",
        "meter_system_event": "ts",
        "staged_meter_reading": "received_at",
        "amr_task_run": "created_at",
        "amr_round": "dispatched_at",
    }

    def delete_older(self, table: str, before: dt.datetime, *, batch: int) -> int:
        """Delete up to `batch` rows of `table` older than `before` in one short transaction."""
        column = self._RETENTION[table]
        b = self.backend
        rowid = b.rowid
        with b.transaction(write=True) as tx:
            tx.execute(f"DELETE FROM {table} WHERE {rowid} IN (SELECT {rowid} FROM {table} "
                       f"WHERE {column} < ? LIMIT {int(batch)})", (b.ts(before),))
            return max(0, tx.rowcount)
