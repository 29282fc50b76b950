"""Fixtures for the AMR pipeline: an installation on the per-test vhost with SQLite or a fresh
PostgreSQL database, and stores of both kinds for store-level tests."""

from __future__ import annotations

import pytest

from support.amr_harness import AmrKit, create_pg_database, drop_pg_database


@pytest.fixture
def pg_url():
    url, name = create_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    url, name = create_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture
def store(db_url):
    from utilitarian.amr.store import open_store

    s = open_store(db_url, pool_size=4)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def amr(tmp_path, broker_url, broker_settings):
    kit = AmrKit(tmp_path, broker_url, broker_settings)
    yield kit
    kit.close()


@pytest.fixture
def amr_pg(tmp_path, broker_url, broker_settings, pg_url):
    kit = AmrKit(tmp_path, broker_url, broker_settings, db_url=pg_url)
    yield kit
    kit.close()
