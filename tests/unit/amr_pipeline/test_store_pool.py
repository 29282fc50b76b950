"""The store's connection pool: a caller finding it exhausted waits for a check-in, and gives up
with a StoreError after the pool's timeout."""

from __future__ import annotations

import threading

import pytest

from utilitarian.amr.store import StoreError
from utilitarian.amr.store.backend import Backend


class Pool(Backend):
    def connect(self):
        return object()


def test_an_exhausted_pool_hands_over_the_next_connection_checked_in():
    pool = Pool("fake://", pool_size=1, timeout=5.0)
    held = pool._checkout()
    threading.Timer(0.1, pool._checkin, (held, False)).start()
    assert pool._checkout() is held  # waited for it, did not open a second one
    assert pool._created == 1


def test_an_exhausted_pool_gives_up_after_its_timeout():
    pool = Pool("fake://", pool_size=1, timeout=0.2)
    pool._checkout()
    with pytest.raises(StoreError, match="no database connection free"):
        pool._checkout()
    assert pool._waiting == 0


class Flaky(Exception):
    pass


class FakeConn:
    """A connection whose statements raise what it is told to; `broken` as the backend sees it."""

    def __init__(self, error=None, broken=False):
        self.error, self.broken, self.closed = error, broken, False

    def execute(self, sql, params):
        if self.error is not None:
            raise self.error
        return self

    def fetchone(self):
        return ("row",)

    def close(self):
        self.closed = True


class FlakyPool(Backend):
    """read_one's error handling, as transaction()'s: transient errors become StoreError, a
    connection the error broke is closed and not handed out again, any other stays pooled."""

    def __init__(self, conn):
        super().__init__("fake://", pool_size=1)
        self.conn = conn

    def connect(self):
        return self.conn

    def transient_errors(self):
        return (Flaky,)

    def is_broken(self, conn):
        return conn.broken


def test_read_one_reads_a_row_and_checks_the_connection_in():
    pool = FlakyPool(FakeConn())
    assert pool.read_one("SELECT 1", ()) == ("row",)
    assert pool._idle == [pool.conn] and pool._created == 1


@pytest.mark.parametrize("error, raised", [(Flaky("locked"), StoreError), (KeyError("bug"), KeyError)])
@pytest.mark.parametrize("broken", [False, True])
def test_read_one_translates_errors_and_drops_a_broken_connection(error, raised, broken):
    pool = FlakyPool(FakeConn(error, broken))
    with pytest.raises(raised) as info:
        pool.read_one("SELECT 1", ())
    if raised is StoreError:
        assert "database: locked" in str(info.value) and info.value.__cause__ is error
    assert (pool._idle, pool._created, pool.conn.closed) == (([], 0, True) if broken else ([pool.conn], 1, False))
