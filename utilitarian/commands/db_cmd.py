"""`utilitarian db migrate|status|claim-host`: bring the AMR store's schema to this release, show where it
is, or make this host the owner of a SQLite store that moved here."""

from __future__ import annotations


from utilitarian.errors import EX_FAILURE, EX_OK


def register(sub, parent) -> None:
    p = sub.add_parser("db", parents=[parent], help="the AMR database: migrate, status")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser("migrate", parents=[parent], help="apply pending schema migrations (idempotent)")
    migrate.set_defaults(handler=run_migrate)
    status = actions.add_parser("status", parents=[parent], help="schema version and row counts")
    status.set_defaults(handler=run_status)
    claim = actions.add_parser("claim-host", parents=[parent],
                               help="make this host the owner of a SQLite store that moved here for good")
    claim.set_defaults(handler=run_claim_host)


def run_migrate(args) -> int:
    from utilitarian.amr.store import store_for_config
    from utilitarian.commands.common import load

    config = load(args)
    with store_for_config(config, check=False) as store:
        before = store.schema_version()
        applied = store.migrate()
        after = store.schema_version()
        if applied:
            print(f"{store.url}: migrated from version {before} to {after}")
            for m in applied:
                print(f"  {m.version}: {m.description}")
        else:
            print(f"{store.url}: already at version {after}")
    return 0


def run_status(args) -> int:
    from utilitarian.amr.store import LATEST, store_for_config
    from utilitarian.commands.common import load

    config = load(args)
    with store_for_config(config, check=False) as store:
        version = store.schema_version()
        state = "up to date" if version == LATEST else (
            "behind: run `utilitarian db migrate`" if version < LATEST else "ahead of this release")
        print(f"database: {store.url} ({store.dialect})")
        print(f"schema:   version {version} of {LATEST}, {state}")
        if version == LATEST and store.dialect == "sqlite":
            from utilitarian.amr.store.ownership import owner

            found = owner(store.backend)
            since = f" (owner since {found[1].isoformat(timespec='seconds')})" if found else ""
            print(f"host:     {found[0] if found else 'none yet'}{since}")
        if version == LATEST:
            counts = store.table_counts()
            for table, count in counts.items():
                print(f"  {table:<24} {count:>12,}")
    return EX_OK if version == LATEST else EX_FAILURE


def run_claim_host(args) -> int:
    from utilitarian.amr.store import store_for_config
    from utilitarian.amr.store.ownership import reassign
    from utilitarian.commands.common import load
    from utilitarian.hostname import host_name

    config = load(args)
    with store_for_config(config, check=False) as store:
        store.check_schema()
        if store.dialect != "sqlite":
            print(f"{store.url}: a PostgreSQL store serves every host; nothing to claim")
            return EX_OK
        previous = reassign(store.backend, host_name())
        print(f"{store.url}: now owned by {host_name()!r}" + (f" (was {previous!r})" if previous else ""))
    return EX_OK
