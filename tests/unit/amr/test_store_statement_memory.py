"""A pooled SQLite connection keeps few compiled statements (backend.SqliteBackend.STATEMENTS_KEPT):
lists of values go out as `IN (?, ?, ...)`, one statement text per length, so with Python's default
of 128 kept per connection a long-running worker's SQLite memory grew round after round (issue 16,
seventh pass). Measured with SQLite's own counter of the memory it holds (the library the sqlite3
module is linked to)."""

from __future__ import annotations

import ctypes
import ctypes.util

from utilitarian.amr.store.backend import SqliteBackend, open_backend


def sqlite_memory_used() -> int:
    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used()


def test_statements_with_value_lists_of_every_length_do_not_pile_up(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    assert isinstance(backend, SqliteBackend)
    try:
        with backend.transaction() as tx:
            tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, meter TEXT, series TEXT)")
            tx.execute("INSERT INTO t (meter, series) VALUES ('m1', 'a')")
        with backend.transaction() as tx:  # the connection and its first statements, before counting
            tx.all("SELECT id FROM t WHERE meter IN (?)", ["m1"])
        before = sqlite_memory_used()
        found = 0
        for n in range(1, 301):  # as a commit group of n meters would ask (one connection: one thread)
            with backend.transaction() as tx:
                found += len(tx.all(f"SELECT id FROM t WHERE meter IN ({','.join('?' * n)}) "
                                    f"AND series IN ({','.join('?' * (n % 7 + 1))})",
                                    [f"m{i}" for i in range(1, n + 1)] + ["a"] * (n % 7 + 1)))
        grown = sqlite_memory_used() - before
        assert found == 300  # every statement ran and found the row
        # 300 statement texts: with 128 kept this was 5-6 MiB (and more per pooled connection)
        assert grown < 2.5 * 2**20, f"SQLite holds {grown / 2**20:.1f} MiB more after 300 statement texts"
    finally:
        backend.close()
