"""The commit outbox: what the poll threads of one process hand to the commit queues, gathered into
batch messages. One flusher thread publishes whatever has queued up since its last publish (no
waiting to fill a batch: an idle system sends one job's results at once, a busy one sends hundreds
per message), so the broker, the commit workers and the database see a few large commits instead of
one per poll. Each poll returns only after its own results are confirmed by the broker.
"""

from __future__ import annotations

import logging

from utilitarian import queues
from utilitarian.amr.tasks.faultpoints import faultpoint
from utilitarian.batching import Batcher

log = logging.getLogger(__name__)

SAVE_READINGS = "commits.save_meter_readings"
SAVE_EVENTS = "commits.save_meter_system_events"
RECORD_RUN = "commits.record_task_run"
MAX_READINGS_PER_MESSAGE = 2000  # keeps each commit a short transaction and each message small
MAX_JOBS_PER_FLUSH = 500


class CommitOutbox:
    def __init__(self, app, *, timeout: float = 60.0):
        from utilitarian.errors import PublishError

        self.app = app
        self._batcher = Batcher(self._publish, name="commit-outbox", max_group=MAX_JOBS_PER_FLUSH, timeout=timeout,
                                on_timeout=lambda: PublishError(f"commit batch not confirmed within {timeout:g}s"))

    def send(self, *, readings: list, events: list, run: dict) -> None:
        """Publish one job's results (in a batch with others); raises what the publish raised,
        so every job of a failed batch is retried by its policy."""
        self._batcher.submit((readings, events, run))

    def _publish(self, group: list) -> list:
        faultpoint("execute.results_publish")  # on the flusher thread, for every job of the group
        self.app.send_tasks(batch_calls(group))
        return [None] * len(group)

    def close(self) -> None:
        self._batcher.close()


def batch_calls(group) -> list:
    """The commit messages for a group of (readings, events, run)."""
    from utilitarian.app import TaskCall

    readings = [r for item in group for r in item[0]]
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
