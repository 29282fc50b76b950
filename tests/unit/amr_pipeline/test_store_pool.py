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
