"""`utilitarian dashboard` against the real broker: the token guards everything (401, nothing
leaked, the token never printed), a broker outage and an unreadable store show as errors on the
page while the server keeps answering and recovers, and a client that never finishes its request
does not hold up others."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request

import pytest

from support.broker_admin import grant, revoke_and_disconnect
from support.procs import Proc, wait_for, write_config
from utilitarian.broker.topology import declare_topology
from utilitarian.config import load_config
from utilitarian.dashboard import server
from utilitarian.dashboard.server import DENIED

TOKEN = "dashboard-test-token-7f3a9c"


def fetch(url: str, *, headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}, data=data), timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def state(url: str, **kwargs) -> dict:
    status, _headers, body = fetch(url + "api/state", **kwargs)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def config(tmp_path, broker_url, broker_settings):
    declare_topology(broker_settings)
    extra = f'[database]\nurl = "sqlite:///{tmp_path / "state" / "amr.sqlite3"}"\n'
    return write_config(tmp_path / "utilitarian.toml", broker_url, extra)


def test_without_the_token_a_request_gets_401_and_nothing_else(config, tmp_path):
    # Given: a dashboard bound to every address, with a token from a file
    (tmp_path / "token").write_text(TOKEN + "\n")
    proc = Proc(["dashboard", "--config", str(config), "--bind", "0.0.0.0", "--port", "0", "--interval", "0.3",
                 "--token-file", str(tmp_path / "token"), "-l", "debug"], log=tmp_path / "dashboard.log")
    try:
        port = wait_for(lambda: (re.search(r"dashboard on http://0\.0\.0\.0:(\d+)/", proc.output()) or [0, 0])[1],
                        timeout=30, interval=0.1, what="the dashboard's URL")
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: b"utilitarian.tasks.amr" in fetch(url + "api/state",
                                                            headers={"Authorization": f"Bearer {TOKEN}"})[2],
                 timeout=30, interval=0.2, what="a document with the queues")

        # When/Then: every route without the right token is a bare 401 (the page: the token form)
        login_form = fetch(url + "login")[2]
        assert b'name="token"' in login_form and b"utilitarian.tasks" not in login_form
        for status, got, body in (fetch(url), fetch(url + "login", data=b"token=wrong")):
            assert (status, body, got.get("Set-Cookie")) == (401, login_form, None)
        attempts = [("api/state", {}), ("app.js", {}), ("api/state", {"Authorization": "Bearer nope"}),
                    ("api/state", {"Authorization": f"Bearer {TOKEN}x"}),
                    ("api/state", {"Cookie": f"utilitarian_dashboard={TOKEN}"}),
                    ("api/state?token=" + TOKEN, {})]
        for path, headers in attempts:
            status, got, body = fetch(url + path, headers=headers)
            assert (status, body) == (401, DENIED), (path, headers, status)
            assert "Set-Cookie" not in got

        # the token as a bearer, or exchanged for a cookie at /login, opens it
        assert state(url, headers={"Authorization": f"Bearer {TOKEN}"})["queues"]["ok"]
        status, got, _ = fetch(url + "login", data=f"token={TOKEN}".encode())
        assert status == 303 and got["Location"] == "/"
        cookie = got["Set-Cookie"].split(";")[0]
        assert TOKEN not in cookie and "HttpOnly" in got["Set-Cookie"]
        assert state(url, headers={"Cookie": cookie})["queues"]["ok"]
        assert fetch(url, headers={"Cookie": cookie})[0] == 200
        assert fetch(url + "login")[0] == 200  # the form itself is public, and holds nothing

        # the token is never printed or logged, even at debug
        proc.signal(15)
        assert proc.wait(30) == 0
        assert TOKEN not in proc.output()
    finally:
        proc.kill_tree()


def test_bound_off_localhost_without_a_token_it_does_not_start(config, tmp_path):
    proc = Proc(["dashboard", "--config", str(config), "--bind", "0.0.0.0", "--port", "0"],
                log=tmp_path / "dashboard.log", env={"UTILITARIAN_DASHBOARD_TOKEN": ""})
    try:
        assert proc.wait(30) == 78
        assert "needs a token" in proc.output()
    finally:
        proc.kill_tree()


def test_a_broker_outage_shows_on_the_page_and_passes(config, rabbit, vhost):
    running = server.start(load_config(str(config)), port=0, interval=0.2)
    try:
        # Given: the page shows the queues
        wait_for(lambda: state(running.url).get("queues", {}).get("ok"), timeout=30, interval=0.1,
                 what="queues on the page")
        # When: the broker refuses us (permissions revoked, connections closed)
        revoke_and_disconnect(rabbit, vhost)
        try:
            # Then: the queues and the beat show the error; the server answers; the schedule still shows
            doc = wait_for(lambda: _failing(state(running.url)), timeout=60, interval=0.2,
                           what="the outage on the page")
            assert doc["queues"]["error"] and doc["beat"]["ok"] is False and doc["schedule"]["ok"]
        finally:
            grant(rabbit, vhost)
        # and it recovers by itself
        wait_for(lambda: state(running.url)["queues"].get("ok"), timeout=60, interval=0.2,
                 what="the queues back on the page")
    finally:
        running.stop()


def _failing(doc: dict):
    return doc if doc.get("queues", {}).get("ok") is False else None


def test_an_unreadable_store_is_the_rounds_panels_error(tmp_path, broker_url):
    store = tmp_path / "garbage.sqlite3"
    store.write_bytes(b"this is not a database" * 100)
    path = write_config(tmp_path / "u.toml", broker_url, f'[database]\nurl = "sqlite:///{store}"\n')
    running = server.start(load_config(str(path)), port=0, interval=0.2)
    try:
        doc = wait_for(lambda: state(running.url).get("panels"), timeout=30, interval=0.1, what="the panels")
        rounds = {p["name"]: p for p in doc}["rounds"]
        assert rounds["ok"] is False and "database" in rounds["error"].lower()
    finally:
        running.stop()


def test_a_client_that_never_finishes_its_request_does_not_block_others(config):
    running = server.start(load_config(str(config)), port=0, interval=0.2)
    port = running.server.server_address[1]
    stuck = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        for s in stuck:  # half a request each, never completed
            s.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(3):
            assert fetch(running.url)[0] == 200
            assert "generated_at" in state(running.url) or "starting" in state(running.url)
    finally:
        for s in stuck:
            s.close()
        running.stop()
