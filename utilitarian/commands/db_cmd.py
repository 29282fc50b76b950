"""`utilitarian db migrate|status`: bring the AMR store's schema to this release, or show where it is."""

from __future__ import annotations


from utilitarian.errors import EX_FAILURE, EX_OK


def register(sub, parent) -> None:
    p = sub.add_parser("db", parents=[parent], help="the AMR database: migrate, status")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser("migrate", parents=[parent], help="apply pending schema migrations (idempotent)")
    migrate.set_defaults(handler=run_migrate)
    status = actions.add_parser("status", parents=[parent], help="schema version and row counts")
    status.set_defaults(handler=run_status)


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
        if version == LATEST:
            counts = store.table_counts()
            for table, count in counts.items():
                print(f"  {table:<24} {count:>12,}")
    return EX_OK if version == LATEST else EX_FAILURE
