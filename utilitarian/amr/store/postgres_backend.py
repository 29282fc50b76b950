"""The store's PostgreSQL backend (psycopg 3): what differs from backend.py's SQLite one is the
connection, the `%s` placeholders, the DDL types and explicit transactions on autocommit
connections. Imported only when database.url is postgresql://."""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from utilitarian.amr.store.backend import Backend, StoreError
from utilitarian.errors import ConfigError


class PostgresBackend(Backend):
    """psycopg 3, autocommit connections with explicit transactions, session time zone UTC."""

    dialect = "postgresql"
    rowid = "ctid"

    def connect(self):
        try:
            import psycopg
        except ImportError:
            raise ConfigError("database.url is postgresql:// but psycopg is not installed "
                              "(pip install 'utilitarian[postgres]')", key="database.url") from None
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.timeout)))
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {_where(self.url)}: "
                             f"{str(exc).strip().splitlines()[0]}") from None
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def sql(self, text: str) -> str:
        cached = self._sql_cache.get(text)
        if cached is None:
            cached = self._sql_cache[text] = text.replace("%", "%%").replace("?", "%s")
        return cached

    def ddl(self, text: str) -> str:
        return (text.replace("{ID}", "BIGSERIAL PRIMARY KEY").replace("{TS}", "TIMESTAMPTZ")
                .replace("{BOOL}", "BOOLEAN").replace("{REAL}", "DOUBLE PRECISION")
                .replace("{TRUE}", "TRUE").replace("{FALSE}", "FALSE"))

    @contextlib.contextmanager
    def _begin(self, conn, write: bool):
        if not write:  # autocommit reads: no BEGIN/COMMIT round trips
            yield
            return
        with conn.transaction():
            yield

    def transient_errors(self):
        import psycopg

        return (psycopg.OperationalError,)

    def is_broken(self, conn) -> bool:
        return bool(conn.closed or conn.broken)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/')}"
