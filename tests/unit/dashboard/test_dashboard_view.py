"""The dashboard's pure parts: queue rates from depth samples, next fires, the beat section, the
AMR bar vocabulary, access rules (token, cookie, loopback Host), a worker's status as a row."""

from __future__ import annotations

import datetime as dt

import pytest

from utilitarian.amr.dashboard_panel import bar_of
from utilitarian.beat.lock import BeatEvent
from utilitarian.broker.topology import QueueState
from utilitarian.dashboard.auth import Access, host_is_loopback, is_loopback, load_token
from utilitarian.dashboard.broker_view import beat_view
from utilitarian.dashboard.hosts import group_reports, worker_row
from utilitarian.dashboard.view import QueueHistory, beat_section, leader_from_fleet, next_fires, queue_rows, section
from utilitarian.errors import ConfigError

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
TOKEN = "s3cret-token-0123456789"


def test_queue_rate_is_the_net_change_over_the_window():
    history = QueueHistory(window=10.0)
    assert queue_rows([QueueState("utilitarian.tasks.amr", 100, 2)], history, 0.0)[0]["rate_per_s"] is None
    for t, depth in ((2.0, 90), (4.0, 80), (12.0, 40)):
        row = queue_rows([QueueState("utilitarian.tasks.amr", depth, 2)], history, t)[0]
    # samples older than the window are dropped, keeping one just outside it: (2, 90) -> (12, 40)
    assert row["rate_per_s"] == -5.0 and row["short"] == "amr" and row["warning"] is None


def test_queue_warnings_missing_no_consumer_growing():
    history = QueueHistory()
    rows = queue_rows([QueueState("q.missing", None, None), QueueState("q.orphan", 5, 0),
                       QueueState("q.grow", 1, 1)], history, 0.0)
    rows = queue_rows([QueueState("q.missing", None, None), QueueState("q.orphan", 5, 0),
                       QueueState("q.grow", 9, 1)], history, 1.0)
    warnings = {r["name"]: r["warning"] for r in rows}
    assert "topology declare" in warnings["q.missing"] and rows[0]["missing"]
    assert warnings["q.orphan"] == "messages waiting and no consumer"
    assert warnings["q.grow"] == "growing"


def test_a_deleted_queue_restarts_its_history():
    history = QueueHistory()
    history.add("q", 0.0, 10)
    history.add("q", 1.0, None)
    history.add("q", 2.0, 50)
    assert history.rate("q") is None


def test_beat_leader_from_the_lock_and_a_fresh_announcement():
    event = BeatEvent("leader", "host-a:42", NOW - dt.timedelta(minutes=3))
    fresh = beat_view(True, (event, NOW - dt.timedelta(seconds=4)), NOW, events=True)
    assert (fresh.holder, fresh.since) == ("host-a:42", event.since)
    stale = beat_view(True, (event, NOW - dt.timedelta(minutes=2)), NOW, events=True)
    assert stale.held and stale.holder is None  # a newer leader may not have announced yet
    assert beat_section(stale)["leader"] == "a beat (not yet announced)"
    gone = beat_section(beat_view(False, (event, NOW), NOW, events=True))
    assert gone["leader"] is None and "no beat leads" in gone["note"]


def test_next_fires_of_enabled_entries_soonest_first():
    from types import SimpleNamespace as Raw

    schedule = {"daily": Raw(enabled=True, cron="0 0 * * *", timezone="UTC", task="t.d"),
                "quarter": Raw(enabled=True, cron="*/15 * * * *", timezone="UTC", task="t.q"),
                "off": Raw(enabled=False, cron="* * * * *", timezone="UTC", task="t.o")}
    rows = next_fires(schedule, NOW + dt.timedelta(minutes=1), count=2)
    assert [r["name"] for r in rows] == ["quarter", "daily"]
    assert rows[0]["next"] == ["2026-11-29T08:15:00Z", "2026-11-29T08:30:00Z"] and rows[0]["in_seconds"] == 840.0


def test_a_failing_source_becomes_its_sections_error():
    def broken():
        raise OSError("store locked")

    assert section(broken) == {"ok": False, "error": "store locked"}
    assert section(lambda: {"rows": []}) == {"ok": True, "rows": []}


def test_a_round_as_a_bar_with_its_failures():
    doc = {"round": "r1", "state": "running", "total": 100, "done": 40, "failed": 3, "pending": 57,
           "eta": "2026-11-29T08:06:00Z",
           "failures": [{"meter": "m-7", "task": "q", "error": "timeout: no answer within 2s"}]}
    bar = bar_of(doc, "quarterly 2026-11-29T08:00Z: 43 of 100, 412/min, about 6 min left (3 failed)")
    assert bar["label"] == "quarterly 2026-11-29T08:00Z" and bar["text"] == "412/min, about 6 min left"
    assert bar["failures"] == [{"name": "m-7 (q)", "reason": "timeout: no answer within 2s"}]
    assert bar["failures_more"] == 2


def test_fleet_reports_grouped_by_host_with_pool_consumption_beats_and_silent_members():
    doc = {"worker": "default@h1", "pid": 7, "state": "running", "totals": {"done": 5, "failed": 1},
           "pools": [{"name": "main", "queues": ["utilitarian.tasks.amr"], "processes": 2, "threads": 4}],
           "children": [{"pool": "main", "consuming": True, "inflight": 3},
                        {"pool": "main", "consuming": False, "why": "vhost down", "inflight": 0}]}
    reports = [{"member": "default@h1", "kind": "worker", "host": "h1", "state": "answering", "status": doc,
                "consuming": "no: 1/2 children consuming, vhost down", "last_error": "vhost down"},
               {"member": "beat@h1", "kind": "beat", "host": "h1", "state": "answering", "role": "leader", "fired": 4,
                "leader_since": "2026-11-29T07:00:00+00:00", "status": {"identity": "h1:99"}},
               {"member": "daily@h2", "kind": "worker", "host": "h2", "state": "silent", "why": "no answer in time"}]
    got = group_reports(reports)
    h1 = got["hosts"][0]
    pool = h1["workers"][0]["pools"][0]
    assert h1["host"] == "h1" and (pool["consuming"], pool["children"], pool["inflight"]) == (1, 2, 3)
    assert pool["why"] == ["vhost down"] and h1["workers"][0]["last_error"] == "vhost down"
    assert h1["beats"] == [{"name": "beat@h1", "identity": "h1:99", "role": "leader", "fired": 4, "last_error": None,
                            "since": "2026-11-29T07:00:00+00:00"}]
    unannounced = beat_section(beat_view(True, None, NOW, events=True))
    assert leader_from_fleet({"ok": True, **unannounced}, got)["leader"] == "h1:99"
    assert leader_from_fleet({"ok": False, "error": "down"}, got) == {"ok": False, "error": "down"}
    assert got["silent"] == [{"where": "worker daily@h2 on h2", "error": "no answer in time"}]
    assert worker_row({})["pools"] == []


# --- access ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bind, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                            ("dash.example", False)])
def test_loopback_binds(bind, loopback):
    assert is_loopback(bind) is loopback


def test_off_localhost_needs_a_token():
    with pytest.raises(ConfigError, match="needs a token"):
        Access.for_bind("0.0.0.0", None)
    assert Access.for_bind("0.0.0.0", TOKEN).token == TOKEN


def test_without_a_token_only_requests_to_a_loopback_name_are_served():
    access = Access.for_bind("127.0.0.1", None)
    assert access.allows({"Host": "127.0.0.1:8480"}) and access.allows({"Host": "localhost:8480"})
    assert access.allows({"Host": "[::1]:8480"})
    assert not access.allows({"Host": "attacker.example:8480"})  # DNS rebinding
    assert not access.allows({}) and not host_is_loopback("127.0.0.1.attacker.example")


def test_token_as_bearer_or_as_the_login_cookie():
    access = Access.for_bind("0.0.0.0", TOKEN)
    assert access.allows({"Authorization": f"Bearer {TOKEN}"})
    assert not access.allows({"Authorization": "Bearer wrong-token-0123456789"})
    assert not access.allows({"Host": "127.0.0.1"})  # a token, once set, is needed from anywhere
    cookie = f"other=1; utilitarian_dashboard={access.session_value()}"
    assert access.allows({"Cookie": cookie})
    assert TOKEN not in access.session_value()
    assert not access.allows({"Cookie": f"utilitarian_dashboard={TOKEN}"})
    assert access.accepts(TOKEN) and not access.accepts("")


def test_token_sources_and_errors_never_show_the_token(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_token(str(path), environ={}) == TOKEN
    assert load_token(None, environ={"UTILITARIAN_DASHBOARD_TOKEN": TOKEN}) == TOKEN
    assert load_token(None, environ={}) is None
    (tmp_path / "dashboard-token").write_text(TOKEN)
    assert load_token(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == TOKEN
    path.write_text("short")
    with pytest.raises(ConfigError) as err:
        load_token(str(path), environ={})
    assert "short" not in str(err.value).replace("shorter", "")
    with pytest.raises(ConfigError, match="No such file"):
        load_token(str(tmp_path / "missing"), environ={})


def test_the_dashboard_reaches_amr_only_through_its_plugin():
    import ast
    import pathlib

    import utilitarian.dashboard

    root = pathlib.Path(utilitarian.dashboard.__file__).parent
    for path in [*root.glob("*.py"), root.parent / "commands" / "dashboard_cmd.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith("utilitarian.amr")], path


def test_another_users_sqlite_store_is_not_opened_but_named(tmp_path):
    import os
    from types import SimpleNamespace

    from utilitarian.amr.progress import foreign_store_note

    store = tmp_path / "amr.sqlite3"
    store.write_bytes(b"")
    config = SimpleNamespace(database_url=lambda: f"sqlite:///{store}")
    assert foreign_store_note(config, "utilitarian dashboard") is None  # ours
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(store, 65534, 65534)
    note = foreign_store_note(config, "utilitarian dashboard")
    assert note.startswith("round progress: run as the store's owner (sudo -u ") and "utilitarian dashboard" in note
