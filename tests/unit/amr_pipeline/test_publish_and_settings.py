"""Publishing format (routing keys, message body), the webhook against a real local HTTP server, and
the `[amr]` section: validation with key paths, every key documented in etc/utilitarian.toml."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import json
import pathlib
import threading

import pytest

from utilitarian.amr.model import MeterReading
from utilitarian.amr.publish import reading_message, routing_key
from utilitarian.amr.settings import AmrConfig, PublishSettings
from utilitarian.amr.webhook import post_webhook
from utilitarian.config import parse_config
from utilitarian.errors import ConfigErrors

T0 = dt.datetime(2026, 11, 24, 0, 15, tzinfo=dt.timezone.utc)


def test_routing_key_and_message_follow_the_platform():
    r = MeterReading("meter-17", "active_energy_import", T0, "1234.50", "kWh")
    assert routing_key(r.meter, r.series) == "new_meter_value.meter-17.active-energy-import.v1"
    assert routing_key("a.b", "1.8.0") == "new_meter_value.a-b.1-8-0.v1"
    assert reading_message(r, "name") == {"meter": "meter-17", "series": "active_energy_import",
                                          "timestamp": "2026-11-24T00:15:00Z", "value": "1234.50",
                                          "id_type": "name"}


class _Hook(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).answers.pop(0) if type(self).answers else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.answers, _Hook.bodies = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readings?token=abc", _Hook
    server.shutdown()


def test_webhook_outcomes_decide_retry(hook):
    url, handler = hook
    readings = [MeterReading("m1", "voltage", T0, "230.1", "V")]
    handler.answers = [204, 503, 400]
    ok = post_webhook(url, readings, id_type="name", timeout=5)
    busy = post_webhook(url, readings, id_type="name", timeout=5)
    refused = post_webhook(url, readings, id_type="name", timeout=5)
    assert (ok.ok, busy.retryable, refused.retryable) == (True, True, False)
    assert handler.bodies[0] == {"readings": [reading_message(readings[0], "name")]}
    assert "token" not in busy.detail and "abc" not in refused.detail
    closed = post_webhook("http://127.0.0.1:9/x", readings, id_type="name", timeout=2)
    assert not closed.ok and closed.retryable


def test_amr_section_is_validated_with_key_paths():
    with pytest.raises(ConfigErrors) as info:
        parse_config({"amr": {"data_retention_days": 0.5, "stamp_scheduled_readings": "never",
                              "publish": {"webhook_url": "ftp://x", "exchange": "amq.topic", "nope": 1}}})
    text = str(info.value)
    for key in ("amr.data_retention_days", "amr.stamp_scheduled_readings", "amr.publish.webhook_url",
                "amr.publish.exchange", "amr.publish.nope"):
        assert key in text
    assert parse_config({"amr": {"data_retention_days": 365}}).amr.data_retention_days == 365.0


def test_every_amr_key_is_documented_in_the_example_config():
    text = (pathlib.Path(__file__).parents[3] / "etc" / "utilitarian.toml").read_text()
    assert "[amr]" in text and "[amr.publish]" in text
    missing = [f.name for cls in (AmrConfig, PublishSettings) for f in dataclasses.fields(cls)
               if f.name != "publish" and f"{f.name} =" not in text]
    assert missing == []


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """POST /old answers with `code` and a Location; /new takes POSTs (and records any GET)."""

    code = 302
    seen: list[tuple[str, str, bytes]] = []

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append((self.command, self.path, body))
        return body

    def do_POST(self):  # noqa: N802
        self._record()
        if self.path.startswith("/old"):
            self.send_response(type(self).code)
            self.send_header("Location", "/new?token=secret")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # noqa: N802 - what urllib would send after a 301/302/303: must never happen
        self._record()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def redirecting():
    _Redirecting.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Redirecting
    server.shutdown()


@pytest.mark.parametrize("code", [301, 302, 303])
def test_a_redirect_that_would_drop_the_body_is_a_failure_not_a_delivery(redirecting, code):
    base, handler = redirecting
    handler.code = code
    readings = [MeterReading("m1", "voltage", T0, "230.1", "V")]
    result = post_webhook(base + "/old?token=abc", readings, id_type="name", timeout=5)
    # Then the batch is not counted as delivered, nothing was re-sent as a body-less GET,
    # and the reason says where the redirect pointed (host only: no token)
    assert (result.ok, result.retryable, result.status) == (False, False, code)
    assert [(method, path.split("?")[0]) for method, path, _ in handler.seen] == [("POST", "/old")]
    assert f"HTTP {code} redirect" in result.detail and "127.0.0.1" in result.detail
    assert "secret" not in result.detail and "abc" not in result.detail


@pytest.mark.parametrize("code", [307, 308])
def test_a_307_or_308_redirect_is_followed_with_the_same_post(redirecting, code):
    base, handler = redirecting
    handler.code = code
    readings = [MeterReading("m1", "voltage", T0, "230.1", "V")]
    result = post_webhook(base + "/old", readings, id_type="name", timeout=5)
    assert result.ok and result.status == 200
    [(m1, p1, b1), (m2, p2, b2)] = handler.seen
    assert (m1, p1.split("?")[0], m2, p2.split("?")[0]) == ("POST", "/old", "POST", "/new")
    assert b1 == b2 and json.loads(b2) == {"readings": [reading_message(readings[0], "name")]}
