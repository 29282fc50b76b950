"""Versioned schema migrations, applied in order by `utilitarian db migrate` and checked (never
applied) by workers at first use, so a deploy cannot silently run new code on an old schema.

DDL is shared between SQLite and PostgreSQL; {ID}, {TS}, {BOOL}, {REAL}, {TRUE}, {FALSE} are filled
in per dialect. Never edit a released migration: add the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from utilitarian.errors import ConfigError

log = logging.getLogger(__name__)


class SchemaOutdated(ConfigError):
    """The database is behind (or ahead of) this release."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


V1 = (
    """CREATE TABLE network_interface (
        id {ID}, host TEXT NOT NULL, port INTEGER NOT NULL DEFAULT 0, can_block {BOOL} NOT NULL DEFAULT {FALSE},
        UNIQUE (host, port))""",
    """CREATE TABLE meter_reading_series (id {ID}, name TEXT NOT NULL UNIQUE, unit TEXT)""",
    """CREATE TABLE meter_device_config (
        id {ID}, name TEXT NOT NULL UNIQUE, timezone TEXT NOT NULL DEFAULT 'UTC')""",
    """CREATE TABLE meter_device_config_series (
        config_id BIGINT NOT NULL REFERENCES meter_device_config (id) ON DELETE CASCADE,
        series_id BIGINT NOT NULL REFERENCES meter_reading_series (id) ON DELETE CASCADE,
        PRIMARY KEY (config_id, series_id))""",
    """CREATE TABLE meter_device_type (
        id {ID}, name TEXT NOT NULL UNIQUE, execution_type TEXT NOT NULL, meter_type TEXT)""",
    """CREATE TABLE meter_device (
        id {ID}, name TEXT NOT NULL UNIQUE, url TEXT NOT NULL, execution_type TEXT NOT NULL,
        type_id BIGINT NOT NULL REFERENCES meter_device_type (id),
        config_id BIGINT NOT NULL REFERENCES meter_device_config (id),
        interface_id BIGINT REFERENCES network_interface (id),
        password TEXT, is_active {BOOL} NOT NULL DEFAULT {TRUE}, created_at {TS} NOT NULL)""",
    """CREATE TABLE amr_task (
        id {ID}, name TEXT NOT NULL UNIQUE, schedule TEXT NOT NULL,
        run_offset_seconds {REAL} NOT NULL DEFAULT 0, meter_execution_type TEXT NOT NULL,
        task_call TEXT NOT NULL, task_kwargs TEXT NOT NULL DEFAULT '{}',
        is_active {BOOL} NOT NULL DEFAULT {TRUE})""",
    """CREATE INDEX amr_task_schedule ON amr_task (schedule)""",
    """CREATE TABLE amr_task_group (id {ID}, name TEXT NOT NULL UNIQUE)""",
    """CREATE TABLE amr_task_group_task (
        group_id BIGINT NOT NULL REFERENCES amr_task_group (id) ON DELETE CASCADE,
        task_id BIGINT NOT NULL REFERENCES amr_task (id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, task_id))""",
    """CREATE TABLE meter_device_group (
        meter_id BIGINT NOT NULL REFERENCES meter_device (id) ON DELETE CASCADE,
        group_id BIGINT NOT NULL REFERENCES amr_task_group (id) ON DELETE CASCADE,
        PRIMARY KEY (meter_id, group_id))""",
    """CREATE TABLE meter_device_task (
        meter_id BIGINT NOT NULL REFERENCES meter_device (id) ON DELETE CASCADE,
        task_id BIGINT NOT NULL REFERENCES amr_task (id) ON DELETE CASCADE,
        PRIMARY KEY (meter_id, task_id))""",
    # Readings: the key is (meter, series, timestamp); a redelivered commit hits it and does nothing.
    """CREATE TABLE meter_reading (
        meter_id BIGINT NOT NULL REFERENCES meter_device (id) ON DELETE CASCADE,
        series TEXT NOT NULL, ts {TS} NOT NULL, value TEXT NOT NULL, unit TEXT,
        committed_at {TS} NOT NULL, PRIMARY KEY (meter_id, series, ts))""",
    """CREATE INDEX meter_reading_ts ON meter_reading (ts)""",
    """CREATE INDEX meter_reading_committed ON meter_reading (committed_at)""",
    """CREATE TABLE staged_meter_reading (
        meter_name TEXT NOT NULL, series TEXT NOT NULL, ts {TS} NOT NULL, value TEXT NOT NULL,
        unit TEXT, received_at {TS} NOT NULL, PRIMARY KEY (meter_name, series, ts))""",
    """CREATE INDEX staged_meter_reading_received ON staged_meter_reading (received_at)""",
    """CREATE TABLE meter_system_event (
        id TEXT PRIMARY KEY, meter_name TEXT NOT NULL,
        meter_id BIGINT REFERENCES meter_device (id) ON DELETE SET NULL,
        title TEXT NOT NULL, content TEXT NOT NULL DEFAULT '', ts {TS} NOT NULL)""",
    """CREATE INDEX meter_system_event_ts ON meter_system_event (ts)""",
    """CREATE INDEX meter_system_event_meter ON meter_system_event (meter_name, ts)""",
    """CREATE TABLE amr_round (
        id TEXT PRIMARY KEY, schedule TEXT NOT NULL, slot {TS} NOT NULL, jobs INTEGER NOT NULL,
        dispatched_at {TS} NOT NULL, dispatch_seconds {REAL} NOT NULL DEFAULT 0)""",
    """CREATE INDEX amr_round_dispatched ON amr_round (dispatched_at)""",
    # One row per job: created "pending" at dispatch (scheduled) or at the end (on demand), then
    # its final outcome. `published` lets a repeated dispatch send what a failed one did not.
    """CREATE TABLE amr_task_run (
        job_id TEXT PRIMARY KEY, round_id TEXT, meter_name TEXT NOT NULL, amr_task TEXT,
        outcome TEXT NOT NULL, error TEXT, duration {REAL}, attempts INTEGER NOT NULL DEFAULT 0,
        published {BOOL} NOT NULL DEFAULT {FALSE}, created_at {TS} NOT NULL, finished_at {TS})""",
    """CREATE INDEX amr_task_run_round ON amr_task_run (round_id, outcome)""",
    """CREATE INDEX amr_task_run_created ON amr_task_run (created_at)""",
    # A blocked interface: who holds it and until when (epoch seconds; a crashed holder's lease runs out).
    """CREATE TABLE interface_block (
        interface_id BIGINT PRIMARY KEY REFERENCES network_interface (id) ON DELETE CASCADE,
        holder TEXT NOT NULL, acquired_at {REAL} NOT NULL, expires_at {REAL} NOT NULL)""",
)

V2 = (
    # When a dispatch continuation is scheduled for a round (jobs waiting for their run offset), so
    # a repeated dispatch does not schedule a second one.
    """ALTER TABLE amr_round ADD COLUMN continue_at {TS}""",
)

V3 = (
    # Readings committed (or promoted) but not yet handed to the publish tasks: written in the same
    # transaction as the readings, deleted after the publish tasks were confirmed by the broker, so a
    # failed publish or a killed worker in between leaves them here for the retry (or the sweeper).
    """CREATE TABLE publish_outbox (
        id {ID}, owner TEXT NOT NULL, readings TEXT NOT NULL, created_at {TS} NOT NULL)""",
    """CREATE INDEX publish_outbox_owner ON publish_outbox (owner)""",
    """CREATE INDEX publish_outbox_created ON publish_outbox (created_at)""",
)

V4 = (
    # The platform's identifiers: UUIDs beside names (the invoke body names a meter by its UUID),
    # owner and references, CT/VT ratios, and the platform's own record of the meter (JSON).
    """ALTER TABLE meter_device ADD COLUMN uuid TEXT""",
    """ALTER TABLE meter_device ADD COLUMN organization TEXT""",
    """ALTER TABLE meter_device ADD COLUMN external_system_reference TEXT""",
    """ALTER TABLE meter_device ADD COLUMN manufacturer_serial TEXT""",
    """ALTER TABLE meter_device ADD COLUMN ct_ratio TEXT""",
    """ALTER TABLE meter_device ADD COLUMN vt_ratio TEXT""",
    """ALTER TABLE meter_device ADD COLUMN platform_record TEXT""",
    """CREATE UNIQUE INDEX meter_device_uuid ON meter_device (uuid)""",
    """ALTER TABLE amr_task ADD COLUMN uuid TEXT""",
    """ALTER TABLE amr_task ADD COLUMN description TEXT""",
    """CREATE UNIQUE INDEX amr_task_uuid ON amr_task (uuid)""",
)

V5 = (
    # The host a SQLite store belongs to (one row); PostgreSQL stores leave it empty (ownership.py).
    """CREATE TABLE store_host (
        id INTEGER PRIMARY KEY CHECK (id = 1), host TEXT NOT NULL, claimed_at {TS} NOT NULL)""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "meters, AMR tasks, readings, events, rounds, runs, interface blocks", V1),
    Migration(2, "rounds remember their scheduled dispatch continuation", V2),
    Migration(3, "publish outbox: committed readings waiting for their publish tasks", V3),
    Migration(4, "the platform's identifiers on meters and AMR tasks; CT/VT ratios", V4),
    Migration(5, "a SQLite store records the host it belongs to", V5),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at {TS} NOT NULL)"""


def current_version(backend) -> int:
    """Highest applied version, 0 for an empty database."""
    with backend.transaction() as tx:
        if backend.dialect == "sqlite":
            exists = tx.one("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'")
        else:
            exists = tx.one("SELECT 1 FROM information_schema.tables WHERE table_name='schema_version' "
                            "AND table_schema = current_schema()")
        if not exists:
            return 0
        return int(tx.scalar("SELECT max(version) FROM schema_version", default=0))


def migrate(backend, *, now: dt.datetime | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; returns what was applied."""
    now = now or dt.datetime.now(dt.timezone.utc)
    with backend.transaction(write=True) as tx:
        tx.execute(backend.ddl(_VERSION_TABLE))
        if backend.dialect == "postgresql":
            # Two `db migrate` at once (a deploy to several hosts) must not both apply version N.
            tx.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
    applied = []
    for migration in MIGRATIONS:
        with backend.transaction(write=True) as tx:
            if backend.dialect == "postgresql":
                tx.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
            have = int(tx.scalar("SELECT max(version) FROM schema_version", default=0))
            if migration.version <= have:
                continue
            for statement in migration.statements:
                tx.execute(backend.ddl(statement))
            tx.execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                       (migration.version, migration.description, backend.ts(now)))
        log.info("database migrated to version %d (%s)", migration.version, migration.description)
        applied.append(migration)
    return applied


def check_version(backend) -> int:
    """Raise SchemaOutdated unless the database is exactly at LATEST."""
    have = current_version(backend)
    if have < LATEST:
        raise SchemaOutdated(f"database schema is at version {have}, this release needs {LATEST}: "
                             "run `utilitarian db migrate`", key="database.url")
    if have > LATEST:
        raise SchemaOutdated(f"database schema is at version {have}, newer than this release knows "
                             f"({LATEST}): upgrade utilitarian on this host", key="database.url")
    return have
