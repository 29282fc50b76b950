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
# The database's clock in epoch seconds (SQLite: the host's clock, its only host; PostgreSQL: the
# server's, shared by every worker host).
_EPOCH_NOW = {"sqlite": "(julianday('now') - 2440587.5) * 86400.0",
              "postgresql": "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"}


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
            rows = tx.all("SELECT job_id, published, outcome FROM amr_task_run WHERE round_id = ?", (rnd.id,))
            known = {job_id: bool(pub) for job_id, pub, _ in rows}
            created = b.ts(now)
            tx.executemany("INSERT INTO amr_task_run (job_id, round_id, meter_name, amr_task, outcome, "
                           "created_at) VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT (job_id) DO NOTHING",
                           [(j.id, rnd.id, j.meter, j.amr_task, created) for j in jobs if j.id not in known])
            # A job recorded by an earlier dispatch of this round but no longer planned (its meter or
            # task was removed or deactivated before its run offset came) would stay pending forever.
            planned = {j.id for j in jobs}
            dropped = [job_id for job_id, pub, outcome in rows
                       if not pub and outcome == "pending" and job_id not in planned]
            tx.executemany("UPDATE amr_task_run SET outcome = 'failed', published = ?, finished_at = ?, "
                           "error = 'no longer scheduled: its meter or AMR task was removed or deactivated "
                           "after the round was dispatched' WHERE job_id = ? AND outcome = 'pending'",
                           [(True, b.ts(now), job_id) for job_id in dropped])
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

    def continuation_scheduled(self, round_id: str, at: dt.datetime) -> bool:
        """True when a dispatch already published (and recorded) the round's continuation at `at`."""
        b = self.backend
        with b.transaction() as tx:
            value = tx.scalar("SELECT continue_at FROM amr_round WHERE id = ?", (round_id,))
        return value is not None and b.from_ts(value) == at.astimezone(UTC)

    def record_continuation(self, round_id: str, at: dt.datetime) -> None:
        """Remember that the continuation at `at` was published (after its confirm, never before:
        a claim recorded before a publish that then fails would stop every retry from sending it)."""
        b = self.backend
        self._write(lambda tx: tx.execute("UPDATE amr_round SET continue_at = ? WHERE id = ?", (b.ts(at), round_id)))

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

    def rounds_with_work_ahead(self, schedules: Sequence[str], *, now: dt.datetime, grace: float,
                               window: float = 2 * 86400.0) -> list[str]:
        """Rounds of `schedules` with unfinished jobs that can still arrive on their queues: a
        continuation scheduled (for the future, or due less than `grace` ago), or dispatched or
        finishing jobs within `grace`. A round silent for longer (a job lost to a bug) does not count."""
        if not schedules:
            return []
        b = self.backend
        recent = now - dt.timedelta(seconds=grace)
        names = list(schedules)
        with b.transaction() as tx:
            rows = tx.all(
                "SELECT r.id, r.continue_at, r.dispatched_at FROM amr_round r "
                f"WHERE r.schedule IN ({','.join('?' * len(names))}) AND (r.dispatched_at > ? OR r.continue_at > ?) "
                "AND EXISTS (SELECT 1 FROM amr_task_run t WHERE t.round_id = r.id AND t.outcome = 'pending')",
                [*names, b.ts(now - dt.timedelta(seconds=window)), b.ts(recent)])
            out = []
            for rid, continue_at, dispatched_at in rows:
                if (continue_at is not None and b.from_ts(continue_at) > recent) or b.from_ts(dispatched_at) > recent:
                    out.append(rid)
                    continue
                last = tx.scalar("SELECT max(finished_at) FROM amr_task_run WHERE round_id = ?", (rid,))
                if last is not None and b.from_ts(last) > recent:
                    out.append(rid)
        return out

    # --- runs ------------------------------------------------------------------------------------
    def record_runs(self, runs: Sequence[AmrTaskRun], *, now: dt.datetime | None = None) -> None:
        """Store final outcomes. A "failed" never overwrites a "done" (a job that ran twice after a
        crash and failed the second time still read its meter)."""
        now = now or dt.datetime.now(UTC)
        self._write(lambda tx: self._insert_runs(tx, runs, now))

    def _insert_runs(self, tx, runs: Sequence[AmrTaskRun], now: dt.datetime) -> None:
        b = self.backend
        created = b.ts(now)
        rows = [(r.job_id, r.round_id, r.meter, r.amr_task, r.outcome, r.error, r.duration, r.attempts, True,
                 created, b.ts(r.finished_at) if r.finished_at else created) for r in runs]
        tx.executemany(
                "INSERT INTO amr_task_run (job_id, round_id, meter_name, amr_task, outcome, error, duration, "
                "attempts, published, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET outcome = excluded.outcome, error = excluded.error, "
                "duration = excluded.duration, attempts = excluded.attempts, finished_at = excluded.finished_at "
                "WHERE amr_task_run.outcome <> 'done' OR excluded.outcome = 'done'", rows)

    def get_run(self, job_id: str) -> AmrTaskRun | None:
        b = self.backend
        with b.transaction() as tx:
            row = tx.one("SELECT job_id, meter_name, amr_task, outcome, round_id, error, duration, attempts, "
                         "finished_at FROM amr_task_run WHERE job_id = ?", (job_id,))
        if row is None:
            return None
        return AmrTaskRun(row[0], row[1], row[2], row[3], row[4], row[5], row[6], int(row[7]), b.from_ts(row[8]))

    def list_runs(self, round_id: str, *, outcome: str | None = None, limit: int | None = None) -> list[AmrTaskRun]:
        """The round's runs by meter; with `outcome`, only those (the dashboard lists the failed ones)."""
        b = self.backend
        where, params = ("round_id = ?", [round_id]) if outcome is None else \
            ("round_id = ? AND outcome = ?", [round_id, outcome])
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        with b.transaction() as tx:
            rows = tx.all("SELECT job_id, meter_name, amr_task, outcome, round_id, error, duration, attempts, "
                          f"finished_at FROM amr_task_run WHERE {where} ORDER BY meter_name, amr_task{tail}", params)
        return [AmrTaskRun(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), b.from_ts(r[8])) for r in rows]

    # --- interface blocks --------------------------------------------------------------------------
    # Leases are judged by one clock, the database's (`now=None`), never by the clock of whichever
    # host asks: with PostgreSQL the holders run on several hosts, and one host's clock running
    # ahead would take a live holder's block. `now` (epoch seconds) is for tests only.
    def _block_now(self, tx, now: float | None) -> float:
        if now is not None:
            return float(now)
        return float(tx.scalar(f"SELECT {_EPOCH_NOW[self.backend.dialect]}"))

    def database_time(self) -> float:
        """The database's clock, epoch seconds."""
        with self.backend.transaction() as tx:
            return self._block_now(tx, None)

    def acquire_block(self, interface_id: int, holder: str, *, lease: float, now: float | None = None) -> bool:
        """Atomic: take the interface if free or its lease ran out. True when `holder` has it."""
        with self.backend.transaction(write=True) as tx:
            now = self._block_now(tx, now)
            tx.execute("INSERT INTO interface_block (interface_id, holder, acquired_at, expires_at) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (interface_id) DO UPDATE SET holder = excluded.holder, "
                       "acquired_at = excluded.acquired_at, expires_at = excluded.expires_at "
                       "WHERE interface_block.expires_at < ? OR interface_block.holder = excluded.holder",
                       (interface_id, holder, now, now + lease, now))
            return tx.scalar("SELECT holder FROM interface_block WHERE interface_id = ?", (interface_id,)) == holder

    def renew_block(self, interface_id: int, holder: str, *, lease: float, now: float | None = None) -> bool:
        """Push the lease of a block `holder` still has; False when it has lost it."""
        with self.backend.transaction(write=True) as tx:
            now = self._block_now(tx, now)
            tx.execute("UPDATE interface_block SET expires_at = ? WHERE interface_id = ? AND holder = ?",
                       (now + lease, interface_id, holder))
            return tx.rowcount == 1

    def take_over_block(self, interface_id: int, dead_holder: str, holder: str, *, lease: float,
                        now: float | None = None) -> bool:
        """Replace a holder known to be dead; fails if someone else replaced it first."""
        with self.backend.transaction(write=True) as tx:
            now = self._block_now(tx, now)
            tx.execute("UPDATE interface_block SET holder = ?, acquired_at = ?, expires_at = ? "
                       "WHERE interface_id = ? AND holder = ?", (holder, now, now + lease, interface_id, dead_holder))
            return tx.rowcount == 1

    def block_holder(self, interface_id: int) -> tuple[str, float] | None:
        """(holder, expires_at in the database's epoch seconds)."""
        with self.backend.transaction() as tx:
            row = tx.one("SELECT holder, expires_at FROM interface_block WHERE interface_id = ?", (interface_id,))
        return (row[0], float(row[1])) if row else None

    def release_block(self, interface_id: int, holder: str) -> bool:
        with self.backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM interface_block WHERE interface_id = ? AND holder = ?", (interface_id, holder))
            return tx.rowcount == 1

    def release_stale_blocks(self, *, now: float | None = None) -> int:
        with self.backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM interface_block WHERE expires_at < ?", (self._block_now(tx, now),))
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
        # Staged readings of a meter that exists by now are waiting for their promotion, not
        # abandoned: retention keeps them (cleanup.apply_retention sends the promotion).
        known = (" AND NOT EXISTS (SELECT 1 FROM meter_device m WHERE m.name = staged_meter_reading.meter_name)"
                 if table == "staged_meter_reading" else "")
        with b.transaction(write=True) as tx:
            tx.execute(f"DELETE FROM {table} WHERE {rowid} IN (SELECT {rowid} FROM {table} "
                       f"WHERE {column} < ?{known} LIMIT {int(batch)})", (b.ts(before),))
            return max(0, tx.rowcount)
