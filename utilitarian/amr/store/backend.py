"""Database connections for the store: a bounded per-process pool over sqlite3 or psycopg, short
transactions, and the few dialect differences (placeholders, timestamps, row ids) in one place.

SQL is written once with `?` placeholders; the PostgreSQL backend rewrites them to `%s`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from utilitarian.errors import ConfigError, UtilitarianError, EX_TEMPFAIL
from utilitarian.shield import shielded

log = logging.getLogger(__name__)
UTC = dt.timezone.utc


class StoreError(UtilitarianError):
    """The database failed in a way retrying may fix (locked, connection lost, pool exhausted)."""

    exit_code = EX_TEMPFAIL


class Tx:
    """One transaction's cursor: `execute`, `executemany`, `one`, `all`, `scalar`."""

    def __init__(self, backend: "Backend", conn):
        self.backend = backend
        self.cursor = conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "Tx":
        self.cursor.execute(self.backend.sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self.cursor.executemany(self.backend.sql(sql), rows)

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.execute(sql, params).cursor.fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).cursor.fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = (), default: Any = None) -> Any:
        row = self.one(sql, params)
        return default if row is None or row[0] is None else row[0]


class Backend:
    """Pool + dialect. Subclasses say how to connect and how a write transaction starts; reads
    (`transaction()` without write) run statement by statement in autocommit."""

    dialect = ""
    rowid = "rowid"

    def __init__(self, url: str, *, pool_size: int = 8, timeout: float = 30.0):
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self._pid = os.getpid()
        # Idle connections, newest last. A plain list (append and pop are atomic): every poll
        # checks one out and in, and a queue.LifoQueue took its shared mutex twice each way; the
        # Condition is only for callers waiting while the pool is exhausted.
        self._idle: list = []
        self._waiting = 0
        self._freed = threading.Condition(threading.Lock())
        self._created = 0
        self._lock = threading.Lock()
        self._sql_cache: dict[str, str] = {}

    # --- dialect -----------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        return text

    def ts(self, moment: dt.datetime | None) -> Any:
        """A datetime as the database stores it."""
        return moment

    def from_ts(self, value: Any) -> dt.datetime | None:
        return value

    def ddl(self, text: str) -> str:
        return text

    # --- connections ---------------------------------------------------------------------------
    def connect(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _checkout(self):
        if self._pid != os.getpid():
            # Inherited through fork: the parent's connections must not be touched (closing a
            # psycopg connection here would end the parent's session), so they are abandoned.
            self._idle, self._created, self._pid = [], 0, os.getpid()
            self._waiting, self._freed = 0, threading.Condition(threading.Lock())
        try:
            return self._idle.pop()
        except IndexError:
            pass
        with self._lock:
            if self._created < self.pool_size:
                self._created += 1
                try:
                    return self.connect()
                except BaseException:
                    self._created -= 1
                    raise
        conn = self._wait_for_idle()
        if conn is None:
            raise StoreError(f"no database connection free within {self.timeout:g}s "
                             f"(pool of {self.pool_size}; raise [amr] store_pool_size)") from None
        return conn

    def _checkin(self, conn, broken: bool) -> None:
        if broken:
            with self._lock:
                self._created -= 1
            with contextlib.suppress(Exception):
                conn.close()
            return
        self._idle.append(conn)
        if self._waiting:
            with self._freed:
                self._freed.notify()

    def _wait_for_idle(self):
        """An idle connection once one is checked in, None after the pool's timeout."""
        deadline = time.monotonic() + self.timeout
        with self._freed:
            self._waiting += 1  # before looking: a check-in after the look then notifies
            try:
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._freed.wait(left)
            finally:
                self._waiting -= 1

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Tx]:
        # Shielded: a soft time limit raised into this thread (an async exception) would otherwise
        # land between checkout and `try`, after the flock or BEGIN, and leave a pooled connection
        # lost, the cross-process write lock held or a transaction open. It comes after the exit.
        with shielded():
            conn = self._checkout()
            broken = False
            try:
                with self._begin(conn, write):
                    yield Tx(self, conn)
            except self.transient_errors() as exc:
                broken = self.is_broken(conn)
                raise StoreError(f"database: {exc}") from exc
            except BaseException:
                broken = self.is_broken(conn)
                raise
            finally:
                self._checkin(conn, broken)

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        """One row of one autocommit read: `transaction()` and `Tx.one` without their two context
        managers and cursor wrapper, a fifth of a poll's registry read (every poll makes one).
        Reads need no BEGIN on either backend (see `_begin`); errors are translated the same way."""
        with shielded():
            conn = self._checkout()
            broken = False
            try:
                return conn.execute(self.sql(sql), tuple(params)).fetchone()
            except BaseException as exc:
                broken = self.is_broken(conn)
                if isinstance(exc, self.transient_errors()):
                    raise StoreError(f"database: {exc}") from exc
                raise
            finally:
                self._checkin(conn, broken)

    def _begin(self, conn, write: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def transient_errors(self) -> tuple[type[BaseException], ...]:
        return ()

    def is_broken(self, conn) -> bool:
        return False

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                break
            with contextlib.suppress(Exception):
                conn.close()
            with self._lock:
                self._created -= 1


class SqliteBackend(Backend):
    """WAL mode, one connection per transaction from a pool. Writers queue on a per-process lock
    and an flock on a side file: SQLite's busy handler sleeps in growing steps, which starves
    writers when a hundred threads in several processes compete; a blocking flock queues them."""

    dialect = "sqlite"
    rowid = "rowid"

    MIN_POOL = 32  # SQLite connections are cheap and WAL readers never block: don't ration them
    # Compiled statements each connection keeps (Python's default: 128). Lists of values are
    # bound as `IN (?, ?, ...)`, one statement text per length, each compiled statement tens of
    # KiB: with 128 kept, every pooled connection filled up with them round after round (a
    # worker child's SQLite memory grew ~2 MiB per 10,000-meter round, 4 -> 28 MiB in 10 rounds,
    # towards 32 connections x 128 of them). 16 keeps the few statements a poll repeats and costs
    # no CPU measurably (docs/benchmarks-amr.md, issue 16's seventh pass).
    STATEMENTS_KEPT = 16

    def __init__(self, url: str, path: str, **kwargs):
        kwargs["pool_size"] = 1 if path == ":memory:" else max(kwargs.get("pool_size", 8), self.MIN_POOL)
        super().__init__(url, **kwargs)
        self.path = path
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_pid = 0

    def connect(self):
        import sqlite3

        # Translated here: the pool opens connections outside transaction()'s handler, and a raw
        # sqlite3/OS error there was "not retryable", so the job was dead-lettered.
        conn = None
        try:
            if self.path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False, cached_statements=self.STATEMENTS_KEPT)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return conn

    def ts(self, moment: dt.datetime | None) -> Any:
        # Fixed width, so text order is time order and equal instants are equal keys.
        if moment is None:
            return None
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        if moment.year < 1000:  # strftime does not pad the year; isoformat does
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # isoformat is a third of strftime's cost, and a commit formats every reading's key
        return moment.isoformat(timespec="microseconds")[:26] + "Z"

    def from_ts(self, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)

    def ddl(self, text: str) -> str:
        return (text.replace("{ID}", "INTEGER PRIMARY KEY AUTOINCREMENT").replace("{TS}", "TEXT")
                .replace("{BOOL}", "INTEGER").replace("{REAL}", "REAL").replace("{TRUE}", "1")
                .replace("{FALSE}", "0"))

    def _flock_fd(self) -> int:
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self.path + ".write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextlib.contextmanager
    def _begin(self, conn, write: bool):
        if not write:
            # Reads run in autocommit: each statement sees a consistent snapshot of its own, and
            # BEGIN/COMMIT would double the calls (and GIL hand-overs) of the hottest path.
            yield
            return
        if not self._write_lock.acquire(timeout=self.timeout):
            raise StoreError(f"database write lock not free within {self.timeout:g}s")
        try:
            fd = self._flock_fd() if self.path != ":memory:" else None
            if fd is not None:
                _flock(fd)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._write_lock.release()

    def transient_errors(self):
        import sqlite3

        return (sqlite3.OperationalError,)

    def is_broken(self, conn) -> bool:
        return conn.in_transaction  # its ROLLBACK failed: never hand it out again

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
            self._lock_fd = None


def _rollback(conn) -> None:
    """Roll back what the error left open. After an I/O error or a full disk SQLite has already
    rolled back by itself, and an unconditional ROLLBACK raised "cannot rollback - no transaction
    is active", hiding the real cause; a failing ROLLBACK is logged, the cause still raised."""
    import sqlite3

    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("SQLite ROLLBACK failed (%s); the connection will be closed", exc)


def _flock(fd: int) -> None:
    # Blocking: the kernel hands the lock over the moment it is released (polling with LOCK_NB
    # would add its sleep to every hand-over). Holders keep it for one short transaction, and a
    # dead holder's lock is dropped by the kernel.
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        except InterruptedError:
            continue


def database_location(url: str) -> tuple[str, str]:
    """("sqlite", path) or ("postgresql", url); ConfigError for anything else. Pure: startup
    validation (utilitarian.validation, through [amr]'s check) and open_backend share it, so a URL
    `config check` accepts is one every process can open."""
    scheme = url.split(":", 1)[0].lower() if "://" in url or url.startswith("sqlite:") else ""
    if scheme == "sqlite":
        path = unquote(urlsplit(url).path)
        if url.startswith("sqlite:////"):
            path = "/" + path.lstrip("/")
        if not path or path == "/":
            raise ConfigError("sqlite URL needs a path: sqlite:///var/lib/utilitarian/db.sqlite3",
                              key="database.url")
        return "sqlite", ":memory:" if path == "/:memory:" else path
    if scheme in ("postgresql", "postgres"):
        try:
            port = urlsplit(url).port
        except ValueError:
            port = 0
        if port == 0:  # the text is not quoted: it may hold the password
            raise ConfigError("postgresql URL port must be a number between 1 and 65535", key="database.url")
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            raise ConfigError("database.url is postgresql:// but psycopg is not installed "
                              "(pip install 'utilitarian[postgres]')", key="database.url")
        return "postgresql", url
    shown = f"scheme {scheme!r}" if scheme else "URL without a scheme"
    raise ConfigError(f"unsupported database {shown}; use sqlite:///path or postgresql://",
                      key="database.url")


def open_backend(url: str, *, pool_size: int = 8, timeout: float = 30.0) -> Backend:
    """sqlite:///abs/path, sqlite:///:memory: (tests; one connection only: every connection would
    be its own empty database) or postgresql://..."""
    dialect, where = database_location(url)
    if dialect == "sqlite":
        return SqliteBackend(url, where, pool_size=pool_size, timeout=timeout)
    from utilitarian.amr.store.postgres_backend import PostgresBackend  # only where it is used

    return PostgresBackend(url, pool_size=pool_size, timeout=timeout)
