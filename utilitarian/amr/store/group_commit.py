"""Group commit: one writer thread per process runs the commits of many task threads in one
transaction. A hundred threads each committing one small batch would otherwise queue on the write
lock one transaction at a time (and on every GIL hand-over inside each); together they cost one.

Each caller still returns only after its own work is committed (the task is acked after that). If
the shared transaction fails, each piece of work is retried alone, so one bad batch fails only its
own caller.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from utilitarian.batching import Batcher, Failed

log = logging.getLogger(__name__)

MAX_GROUP = 256  # pieces of work per transaction: bounds how long one transaction holds the lock


class GroupCommitter:
    def __init__(self, backend, *, timeout: float = 30.0, max_group: int = MAX_GROUP):
        from utilitarian.amr.store.backend import StoreError

        self.backend = backend
        limit = timeout * 2
        self._batcher = Batcher(self._commit_group, name="store-writer", max_group=max_group, timeout=limit,
                                on_timeout=lambda: StoreError(
                                    f"commit not done within {limit:g}s (database write lock busy?)"))

    def run(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(tx)` inside a write transaction shared with other callers; its result."""
        return self._batcher.submit(work)

    def _commit_group(self, works: list) -> list:
        if len(works) > 1:
            try:
                with self.backend.transaction(write=True) as tx:
                    return [work(tx) for work in works]
            except Exception as exc:  # retried one by one below, so only the culprit fails
                log.debug("group of %d commits failed (%s); committing them one by one", len(works), exc)
        outcomes = []
        for work in works:
            try:
                with self.backend.transaction(write=True) as tx:
                    outcomes.append(work(tx))
            except Exception as exc:
                outcomes.append(Failed(exc))
        return outcomes

    def close(self) -> None:
        self._batcher.close()
