"""SQLite failures keep their cause and stay retryable (issue 11 item 7): an I/O error in the middle
of a write transaction was reported as "cannot rollback - no transaction is active" (SQLite had
rolled back already; our unconditional ROLLBACK raised and hid the cause), and errors opening a
connection escaped as raw sqlite3/OS errors, "not retryable", so the job was dead-lettered.

The I/O error is real: a child process with a small RLIMIT_FSIZE (SIGXFSZ ignored) gets EFBIG from
the kernel when SQLite writes past it, which SQLite reports as "disk I/O error".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from utilitarian.amr.store import StoreError, open_store
from utilitarian.config import load_config
from utilitarian.tasks import Registry

IO_ERROR_CHILD = textwrap.dedent("""
    import resource, signal, sys
    from utilitarian.amr.store import StoreError, open_store

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = open_store("sqlite:///" + sys.argv[1])
    store.migrate()
    backend = store.backend
    with backend.transaction(write=True) as tx:
        tx.execute("CREATE TABLE filler (x TEXT)")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
    try:
        with backend.transaction(write=True) as tx:
            for _ in range(4000):
                tx.execute("INSERT INTO filler VALUES (?)", ("x" * 1000,))
    except StoreError as exc:
        print("StoreError:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with backend.transaction(write=True) as tx:   # the pool hands out a usable connection again
        tx.execute("INSERT INTO filler VALUES ('after')")
    with backend.transaction() as tx:
        print("rows:", tx.scalar("SELECT count(*) FROM filler"))
""")


def test_io_error_mid_transaction_keeps_its_cause_and_the_pool_recovers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", IO_ERROR_CHILD, str(tmp_path / "store.sqlite3")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "StoreError: database: disk I/O error" in proc.stdout, proc.stdout + proc.stderr
    assert "cannot rollback" not in proc.stdout + proc.stderr
    assert "rows: 1" in proc.stdout  # nothing of the failed transaction stayed, the next one committed


@pytest.mark.parametrize("where", ["a-directory", "under-a-file/store.sqlite3"])
def test_connect_errors_are_retryable_store_errors(tmp_path, where):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "under-a-file").write_text("not a directory")
    store = open_store(f"sqlite:///{tmp_path / where}")
    with pytest.raises(StoreError) as err:
        store.migrate()
    assert str(tmp_path / where) in str(err.value)
    # What a job's retry policy makes of it: every AMR task that touches the store retries StoreError
    registry = Registry.for_config(load_config(None, env={}))
    spec = registry.get("commits.save_meter_system_events")
    assert spec.retry.decide(err.value, 0).action == "retry"
    store.close()
