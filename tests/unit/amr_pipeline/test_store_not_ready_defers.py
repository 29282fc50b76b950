"""The decision behind a store that is not ready (issue 11 item 6), without a worker: a schema behind
or ahead of this release, or a SQLite store of another host, makes `store_of` raise Defer (the
runner sends the job back through the delay queue, same id and retry count) with the configured
wait, instead of the ConfigError that dead-lettered the round; once the store is right the same
App gets it. The process-level test is tests/integration/amr_pipeline/test_store_not_ready.py."""

from __future__ import annotations

import datetime as dt

import pytest

from utilitarian.amr.store import LATEST, open_store
from utilitarian.amr.tasks.common import store_of
from utilitarian.app import App
from utilitarian.config import load_config
from utilitarian.tasks import Defer


def make_app(tmp_path, url: str) -> App:
    path = tmp_path / "u.toml"
    path.write_text(f'[database]\nurl = "{url}"\n[amr]\nstore_unready_retry = 10.0\n')
    return App(load_config(str(path)))


@pytest.mark.parametrize("state", ["behind", "ahead", "other-host"])
def test_a_store_not_ready_defers_and_a_ready_one_is_used(tmp_path, state):
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with open_store(url) as store:
        if state != "behind":
            store.migrate()
        with store.backend.transaction(write=True) as tx:
            if state == "ahead":
                tx.execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, 'next', ?)",
                           (LATEST + 1, store.backend.ts(dt.datetime.now(dt.timezone.utc))))
            elif state == "other-host":
                tx.execute("INSERT INTO store_host (id, host, claimed_at) VALUES (1, 'elsewhere', ?)",
                           (store.backend.ts(dt.datetime.now(dt.timezone.utc)),))
    app = make_app(tmp_path, url)
    try:
        with pytest.raises(Defer) as deferred:
            store_of(app)
        assert 7.5 <= deferred.value.countdown <= 12.5
        assert "store not ready" in str(deferred.value)
        # When the operator fixes it (db migrate / the upgrade / db claim-host), the next job gets the store
        with open_store(url) as store:
            if state == "behind":
                store.migrate()
            with store.backend.transaction(write=True) as tx:
                tx.execute("DELETE FROM schema_version WHERE version > ?", (LATEST,))
                tx.execute("DELETE FROM store_host")
        assert store_of(app).schema_version() == LATEST
    finally:
        app.close()
