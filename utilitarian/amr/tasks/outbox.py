"""The commit outbox: what the poll threads of one process hand over for committing, gathered into
groups. One flusher thread takes whatever has queued up since its last turn (an idle system
commits one job's results at once, a busy one many together; while jobs keep coming it waits up to
GATHER_SECONDS for GATHER_JOBS of them, see batching.gather_wait) and either

  commits it to the store itself, in one transaction (`[amr] commit_in_worker`, the default): the
      readings, events and outcomes of the group, plus the publish outbox rows of what it wrote,
      one outbox owner per job; then it sends the publish tasks and deletes those rows; or
  publishes it as batch messages to the commit queues, for a commit pool to store.

Each poll returns only after its own results are committed (or confirmed by the broker), so its
job is acked only after that; a failure fails every job of the group, which its retry policy retries.
"""

from __future__ import annotations

import logging

from utilitarian import queues
from utilitarian.amr.tasks.faultpoints import faultpoint
from utilitarian.batching import Batcher, Failed

log = logging.getLogger(__name__)

SAVE_READINGS = "commits.save_meter_readings"
SAVE_EVENTS = "commits.save_meter_system_events"
RECORD_RUN = "commits.record_task_run"
MAX_READINGS_PER_MESSAGE = 2000  # keeps each commit a short transaction and each message small
MAX_JOBS_PER_FLUSH = 500
# A SQLite write transaction costs ~0.1 ms of CPU however small (BEGIN IMMEDIATE, COMMIT), and
# each flush wakes the flusher once. Flushing as soon as the last one returned gave groups of
# ~4 jobs at 100 polls in flight; a few ms more on a poll of ~100 ms buys groups several times
# that. Only while jobs keep coming: a lone job is committed at once.
GATHER_SECONDS = 0.004
GATHER_JOBS = 32


class CommitOutbox:
    def __init__(self, app, *, timeout: float = 60.0, direct: bool | None = None):
        from utilitarian.amr.tasks.common import settings_of
        from utilitarian.errors import PublishError

        self.app = app
        self.direct = settings_of(app).commit_in_worker if direct is None else direct
        self._batcher = Batcher(self._flush, name="commit-outbox", max_group=MAX_JOBS_PER_FLUSH, timeout=timeout,
                                on_timeout=lambda: PublishError(f"commit batch not done within {timeout:g}s"),
                                gather=GATHER_SECONDS, gather_to=GATHER_JOBS)

    def send(self, *, readings: list, events: list, run: dict) -> None:
        """Commit one job's results (in a group with others): `readings` as MeterReading, `events`
        and `run` in wire form. Raises what the group's commit or publish raised."""
        self._batcher.submit((readings, events, run))

    def send_steps(self, *, readings: list, events: list, run: dict):
        """`send` for a stepwise task: yields the wait for its group (steps.Until)."""
        return (yield from self._batcher.submit_steps((readings, events, run)))

    def _flush(self, group: list) -> list:
        if not self.direct:
            faultpoint("execute.results_publish")  # on the flusher thread, for every job of the group
            self.app.send_tasks(batch_calls(group))
            return [None] * len(group)
        faultpoint("execute.results_store")
        outcomes = self._store(group)
        faultpoint("execute.results_after_store")
        self._publish_outbox([item[2]["job_id"] for item in group])
        return outcomes

    def _store(self, group: list) -> list:
        """One transaction for the group; if it fails, each job alone, so a job whose results
        the store refuses fails only itself."""
        try:
            self._commit(group)
            return [None] * len(group)
        except Exception as exc:
            if len(group) == 1:
                raise
            log.debug("committing %d jobs' results together failed (%s); committing them one by one",
                      len(group), exc)
        outcomes: list = []
        for item in group:
            try:
                self._commit([item])
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(Failed(exc))
        return outcomes

    def _commit(self, group: list) -> None:
        from utilitarian.amr.tasks.commits import event_from_wire, publishing, run_from_wire
        from utilitarian.amr.tasks.common import store_of, utc_now

        from utilitarian.amr.metrics import count_committed

        count_committed(store_of(self.app).commit_results(
            [(run["job_id"], readings) for readings, _, run in group],
            [event_from_wire(e) for _, events, _ in group for e in events],
            [run_from_wire(run) for _, _, run in group], now=utc_now(), publish=publishing(self.app)))

    def _publish_outbox(self, owners: list[str]) -> None:
        """Publish what these jobs committed, this time or in an earlier attempt that did not get
        as far (the outbox rows survive a kill); the rows go once the broker confirmed."""
        from utilitarian.amr.tasks.commits import publish_calls, publishing
        from utilitarian.amr.tasks.common import store_of

        if not publishing(self.app):
            return
        store = store_of(self.app)
        entries = store.outbox_of_owners(owners)
        if not entries:
            return
        self.app.send_tasks(publish_calls(self.app, [r for e in entries for r in e.readings]))
        faultpoint("execute.results_after_publish")
        store.delete_outbox([e.id for e in entries])

    def close(self) -> None:
        self._batcher.close()


def batch_calls(group) -> list:
    """The commit messages for a group of (readings, events, run)."""
    from utilitarian.amr.publish import reading_to_wire
    from utilitarian.app import TaskCall

    readings = [reading_to_wire(r) for item in group for r in item[0]]
    events = [e for item in group for e in item[1]]
    runs = [item[2] for item in group]
    calls = [TaskCall(SAVE_READINGS, kwargs={"readings": readings[i:i + MAX_READINGS_PER_MESSAGE]},
                      queue=queues.COMMITS_READINGS)
             for i in range(0, len(readings), MAX_READINGS_PER_MESSAGE)]
    if events:
        calls.append(TaskCall(SAVE_EVENTS, kwargs={"events": events}, queue=queues.COMMITS_EVENTS))
    calls.append(TaskCall(RECORD_RUN, kwargs={"runs": runs}, queue=queues.COMMITS))
    return calls


def outbox_of(app) -> CommitOutbox:
    return app.resource("amr.commit_outbox", lambda a: CommitOutbox(a))
