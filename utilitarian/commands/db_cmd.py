"""`utilitarian db migrate|status`: bring the AMR store's schema to this release, or show where it is."""

from __future__ import annotations


def register(sub, parent) -> None:
    p = sub.add_parser("db", parents=[parent], help="the AMR database: migrate, status")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    m = dbsub.add_parser("migrate", parents=[parent], help="apply pending schema migrations (idempotent)")
    m.set_defaults(action_handler=run_migrate)
    s = dbsub.add_parser("status", parents=[parent], help="schema version and row counts")
    s.set_defaults(action_handler=run_status)
    c = dbsub.add_parser("claim-host", parents=[parent],
                         help="make this host the owner of a SQLite store that moved here for good")
    c.set_defaults(action_handler=run_claim_host)
    p.set_defaults(handler=lambda args: dispatch(p, args))


def dispatch(parser, args) -> int:
    handler = getattr(args, "action_handler", None)
    if handler is None:
        parser.print_help()
        return 64
    return handler(args)


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
    return 0 if version == LATEST else 1


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
            return 0
        previous = reassign(store.backend, host_name())
        print(f"{store.url}: now owned by {host_name()!r}" + (f" (was {previous!r})" if previous else ""))
    return 0
