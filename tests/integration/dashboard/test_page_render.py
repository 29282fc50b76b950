"""The page in a real headless Chromium, fed a fixed document: what an operator must see when
things are wrong (no beat leader, the broker down, a store error, a silent worker), and a meter's
error text shown as text, never run as HTML. Also the negative control of the round test in
amr_pipeline/test_dashboard_page.py: a document that does not change leaves the bar where it is."""

from __future__ import annotations

import json
import threading

import pytest

from support.browser import browser  # noqa: F401  (fixture)
from support.procs import wait_for
from utilitarian.dashboard.auth import Access
from utilitarian.dashboard.server import DashboardServer

HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'
DOC = {
    "generated_at": "2026-11-29T08:00:00Z", "interval": 0.3, "broker": "rabbit:5672/amr",
    "hosts": {"ok": True, "source": "fleet control over the broker", "note": None,
              "hosts": [{"host": "h1", "beats": [], "workers": []}],
              "silent": [{"where": "worker daily@h2 on h2", "error": "no answer in time; last announced 70s ago"}]},
    "queues": {"ok": False, "error": "127.0.0.1:5672/amr: connection refused"},
    "beat": {"ok": False, "error": "127.0.0.1:5672/amr: connection refused"},
    "schedule": {"ok": True, "entries": [{"name": "amr-daily", "task": "amr.dispatch_schedule", "cron": "0 0 * * *",
                                          "timezone": "UTC", "next": ["2026-11-30T00:00:00Z"], "in_seconds": 57600}]},
    "panels": [{"name": "rounds", "ok": True, "title": "Rounds", "note": None, "bars": [
        {"id": "r1", "label": "daily 2026-11-29T00:00Z", "state": "running", "total": 60, "done": 10, "failed": 1,
         "pending": 49, "eta": None, "text": "12/min", "failures": [{"name": "m-1 (t)", "reason": HOSTILE}],
         "failures_more": 0}]},
               {"name": "site", "ok": False, "error": "store: database is locked"}],
}


@pytest.fixture
def page():
    documents = [json.dumps(DOC).encode()]

    def latest() -> bytes:
        served.append(1)
        return documents[-1]

    served: list[int] = []
    server = DashboardServer(("127.0.0.1", 0), Access.for_bind("127.0.0.1", None), latest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", documents, served
    server.shutdown()
    server.server_close()


def test_outages_and_a_hostile_error_text_as_the_page_shows_them(page, browser):  # noqa: F811
    url, documents, served = page
    browser.get(url)
    wait_for(lambda: browser.text("#panel-rounds"), timeout=30, interval=0.1, what="the rounds panel")
    assert "connection refused" in browser.text("#queues-panel")
    assert "connection refused" in browser.text("#beat-panel")
    assert "database is locked" in browser.text("#panel-site")
    assert "silent: worker daily@h2 on h2" in browser.text("#hosts")
    # the hostile reason is text on the page, not an element, and ran nothing
    assert HOSTILE in browser.text("#panel-rounds .failures")
    assert browser.run("return document.querySelectorAll('#panel-rounds img').length") == 0
    assert browser.run("return document.title") == "utilitarian fleet"
    # the bar stays where the document says over several refreshes (negative control: nothing
    # moves by itself, so the moving bar of the round test is the round's doing)
    width = "return document.querySelector('#panel-rounds .round .done').style.width"
    before, seen = browser.run(width), len(served)
    wait_for(lambda: len(served) >= seen + 3, timeout=30, interval=0.1, what="three more refreshes")
    assert browser.run(width) == before and before.startswith("16.66")

    # When the leader goes away, the page says so in place (no reload)
    documents.append(json.dumps({**DOC, "beat": {"ok": True, "held": False, "leader": None, "since": None,
                                                 "note": "no beat leads: nothing is fired"}}).encode())
    wait_for(lambda: browser.text("#beat-leader-name") == "no leader", timeout=30, interval=0.1,
             what="'no leader' on the page")
    assert browser.run("return document.querySelector('#beat-leader-name').className") == "bad"


def test_with_a_token_the_browser_gets_the_form_and_then_the_page(browser):  # noqa: F811
    token = "render-test-token-0123456789"
    server = DashboardServer(("127.0.0.1", 0), Access.for_bind("0.0.0.0", token), lambda: json.dumps(DOC).encode())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        assert browser.run("return document.querySelector('input[name=token]') !== null")
        assert "daily 2026-11-29" not in browser.text("body")
        browser.run("document.querySelector('input[name=token]').value = arguments[0];"
                    "document.querySelector('form').submit();", token)
        wait_for(lambda: "daily 2026-11-29" in (browser.text("#panel-rounds") or ""), timeout=30, interval=0.1,
                 what="the page after the token was given")
    finally:
        server.shutdown()
        server.server_close()
