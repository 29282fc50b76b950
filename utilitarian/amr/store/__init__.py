"""The AMR store: one interface (`Store`) over SQLite (default, one host) or PostgreSQL (several
hosts), opened from `[database] url`. Workers get theirs through `store_for(app)`: built once per
process after the fork, schema version checked at first use.
"""

from __future__ import annotations

import logging

from utilitarian.amr.store.backend import Backend, StoreError, open_backend
from utilitarian.amr.store.group_commit import GroupCommitter
from utilitarian.amr.store.migrations import LATEST, SchemaOutdated, check_version, current_version, migrate
from utilitarian.amr.store.outbox import OutboxEntry, OutboxStore
from utilitarian.amr.store.ownership import StoreOwnedElsewhere, claim
from utilitarian.amr.store.readings import CommitResult, ReadingStore
from utilitarian.amr.store.registry import RegistryStore
from utilitarian.amr.store.results import ResultStore
from utilitarian.amr.store.runs import RoundCounts, RunStore
from utilitarian.hostname import host_name
from utilitarian.log import mask_url

log = logging.getLogger(__name__)

__all__ = ["Store", "StoreError", "SchemaOutdated", "StoreOwnedElsewhere", "CommitResult", "RoundCounts",
           "OutboxEntry", "open_store", "store_for", "LATEST"]


class Store(RegistryStore, ReadingStore, RunStore, OutboxStore, ResultStore):
    def __init__(self, backend: Backend):
        self.backend = backend
        self._group = GroupCommitter(backend, timeout=backend.timeout)

    def _write(self, work):
        """Commits of readings, events and runs: shared transactions across this process's threads."""
        return self._group.run(work)

    @property
    def url(self) -> str:
        return mask_url(self.backend.url)

    @property
    def dialect(self) -> str:
        return self.backend.dialect

    def migrate(self):
        return migrate(self.backend)

    def schema_version(self) -> int:
        return current_version(self.backend)

    def check_schema(self) -> int:
        return check_version(self.backend)

    def table_counts(self) -> dict[str, int]:
        tables = ("meter_device", "network_interface", "amr_task", "amr_task_group", "meter_reading",
                  "staged_meter_reading", "meter_system_event", "amr_round", "amr_task_run", "interface_block",
                  "publish_outbox")
        with self.backend.transaction() as tx:
            return {t: int(tx.scalar(f"SELECT count(*) FROM {t}", default=0)) for t in tables}

    def close(self) -> None:
        self._group.close()
        self.backend.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(url: str, *, pool_size: int = 8, timeout: float = 30.0, check: bool = False) -> Store:
    """The store at `url`; with `check` (every process that works with it), the schema version is
    verified and a SQLite store is claimed for this host, or refused if another host owns it."""
    store = Store(open_backend(url, pool_size=pool_size, timeout=timeout))
    if check:
        try:
            store.check_schema()
            claim(store.backend, host_name())
        except BaseException:
            store.close()
            raise
    return store


def store_for_config(config, *, check: bool = True) -> Store:
    amr = config.amr
    pool = getattr(amr, "store_pool_size", 8)
    timeout = getattr(amr, "store_timeout", 30.0)
    return open_store(config.database_url(), pool_size=pool, timeout=timeout, check=check)


def store_for(app) -> Store:
    """The process's store (an App resource): opened and version-checked on first use."""
    return app.resource("amr.store", lambda a: store_for_config(a.config))
