"""Which host a SQLite store belongs to. SQLite serves the processes of one host (its locks do not
work across machines, and a second host with its own default file splits the data without a
word), so the first process that opens a store for work records its host, and a process on any
other host is refused with a pointer to PostgreSQL. PostgreSQL stores serve every host: no record.
"""

from __future__ import annotations

import datetime as dt

from utilitarian.errors import ConfigError

UTC = dt.timezone.utc


class StoreOwnedElsewhere(ConfigError):
    """A SQLite store opened on another host than the one that owns it (exit 78)."""


def owner(backend) -> tuple[str, dt.datetime] | None:
    """(host, since) of the store's owner, None while nobody claimed it."""
    with backend.transaction() as tx:
        row = tx.one("SELECT host, claimed_at FROM store_host WHERE id = 1")
    return (row[0], backend.from_ts(row[1])) if row else None


def claim(backend, host: str, *, now: dt.datetime | None = None) -> None:
    """Record `host` as the owner of a SQLite store nobody owns yet; refuse any other host."""
    if backend.dialect != "sqlite":
        return
    found = owner(backend)
    if found is None:
        with backend.transaction(write=True) as tx:
            if tx.one("SELECT host FROM store_host WHERE id = 1") is None:
                tx.execute("INSERT INTO store_host (id, host, claimed_at) VALUES (1, ?, ?)",
                           (host, backend.ts(now or dt.datetime.now(UTC))))
        found = owner(backend)
    if found[0] != host:
        raise StoreOwnedElsewhere(
            f"the SQLite store {backend.url} belongs to host {found[0]!r} (since {found[1]:%Y-%m-%d %H:%M} UTC) "
            f"and this is host {host!r}: a SQLite store serves one host. Workers on several hosts share one "
            "PostgreSQL store: set url = \"postgresql://user@dbhost/utilitarian\" on every host (docs/operations.md, "
            "\"Several hosts\"). If this store moved to this host for good, run `utilitarian db claim-host` here.",
            key="database.url")


def reassign(backend, host: str, *, now: dt.datetime | None = None) -> str | None:
    """Make `host` the owner (the store moved for good); returns the previous owner."""
    previous = owner(backend)
    with backend.transaction(write=True) as tx:
        tx.execute("DELETE FROM store_host WHERE id = 1")
        tx.execute("INSERT INTO store_host (id, host, claimed_at) VALUES (1, ?, ?)",
                   (host, backend.ts(now or dt.datetime.now(UTC))))
    return previous[0] if previous else None
