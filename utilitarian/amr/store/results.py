"""A group of polls' results in one transaction: their readings (with the events a commit makes),
the events the polls reported, their outcomes, and the publish outbox rows of what was written,
one outbox owner per poll (its job id, the same on every retry and redelivery of the job). This is
what the commit queues' three tasks do for messages, done by the polling process itself
(`[amr] commit_in_worker`, tasks/outbox.py): no commit message to publish, deliver, decode and ack.
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from utilitarian.amr.model import AmrTaskRun, MeterReading, MeterSystemEvent
from utilitarian.amr.store.readings import CommitResult, log_commit


class ResultStore:
    """Mixin of Store (uses ReadingStore, RunStore and OutboxStore)."""

    def commit_results(self, readings: Sequence[tuple[str, Sequence[MeterReading]]],
                       events: Sequence[MeterSystemEvent], runs: Sequence[AmrTaskRun], *,
                       now: dt.datetime, publish: bool) -> CommitResult:
        """`readings` are (owner, readings of that owner); with `publish`, what this commit wrote
        goes to the outbox under its owner. Idempotent like each part: a group committed again
        (a retry, a redelivery after a kill) changes nothing and writes no new outbox rows; what an
        earlier attempt left in the outbox is found by `outbox_of_owners`."""
        owner_of = {id(r): owner for owner, items in readings for r in items}
        batch = [r for _, items in readings for r in items]

        def work(tx) -> CommitResult:
            result = self._commit(tx, batch, now)
            self._insert_events(tx, (*result.events, *events), now)
            self._insert_runs(tx, runs, now)
            if publish:
                # the commit keeps the reading objects it wrote, so each goes back to its poll
                owned: dict[str, list[MeterReading]] = {}
                for r in result.written:
                    owned.setdefault(owner_of[id(r)], []).append(r)
                self._enqueue_publish_many(tx, list(owned.items()), now)
            return result

        # In this thread, not through the store's group committer (`_write`): the caller, the
        # commit outbox's flusher, is one thread that has grouped the polls already, and handing
        # the group to the writer thread and back cost two thread switches per group (~0.1 ms of
        # CPU, a sixth of a poll, when polls come one at a time: bench/amr_commit_cpu.py --group 1).
        with self.backend.transaction(write=True) as tx:
            return log_commit(work(tx))
