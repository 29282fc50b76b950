"""Celery protocol v2 encoding/decoding and every refusal reason (pure, no broker)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from utilitarian import protocol as p

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def decode(env: p.Envelope, **kw):
    props = env.properties
    return p.decode(env.body, content_type=props["content_type"], content_encoding=props["content_encoding"],
                    headers=props["headers"], now=kw.pop("now", NOW), **kw)


def test_round_trip_keeps_everything_celery_sends():
    when = dt.datetime(2026, 11, 24, 12, 30, 15, 123456, tzinfo=UTC)
    env = p.encode_task("amr.execute", [1, Decimal("12.345"), when], {"u": uuid.UUID(int=7), "d": dt.date(2026, 1, 2)},
                        task_id="abc", countdown=60, expires=3600, time_limit=30, soft_time_limit=20, now=NOW)
    msg = decode(env)
    assert msg.id == "abc" and msg.task == "amr.execute"
    assert msg.args == (1, Decimal("12.345"), when)
    assert msg.kwargs == {"u": uuid.UUID(int=7), "d": dt.date(2026, 1, 2)}
    assert msg.eta == NOW + dt.timedelta(seconds=60)
    assert msg.expires == NOW + dt.timedelta(seconds=3600)
    assert (msg.time_limit, msg.soft_time_limit) == (30.0, 20.0)
    assert msg.root_id == "abc" and msg.retries == 0


def test_wire_shape_matches_celery_5():
    env = p.encode_task("t", [1], {"a": 2}, task_id="id1", time_limit=10, soft_time_limit=5)
    props = env.properties
    assert props["content_type"] == "application/json" and props["content_encoding"] == "utf-8"
    assert props["delivery_mode"] == 2 and props["correlation_id"] == "id1"
    h = props["headers"]
    for key in ("lang", "task", "id", "root_id", "parent_id", "group", "eta", "expires", "retries",
                "timelimit", "argsrepr", "kwargsrepr", "origin", "ignore_result"):
        assert key in h
    assert h["timelimit"] == [10, 5]  # hard first
    assert json.loads(env.body) == [[1], {"a": 2}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


@pytest.mark.parametrize("ctype,reason", [
    ("application/x-python-serialize", "content_type"),
    ("application/x-yaml", "content_type"),
    ("application/x-msgpack", "content_type"),
    ("text/plain", "content_type"),
    (None, "content_type"),
])
def test_refuses_non_json(ctype, reason):
    with pytest.raises(p.ContentTypeRefused) as err:
        p.decode(b"[[],{},{}]", content_type=ctype, content_encoding="utf-8", headers={"task": "t", "id": "1"})
    assert err.value.reason == reason


def test_refuses_binary_encoding_and_compression():
    with pytest.raises(p.ContentEncodingRefused):
        p.decode(b"[[],{},{}]", content_type="application/json", content_encoding="binary",
                 headers={"task": "t", "id": "1"})
    with pytest.raises(p.ContentEncodingRefused):
        p.decode(b"[[],{},{}]", content_type="application/json", content_encoding="utf-8",
                 headers={"task": "t", "id": "1", "compression": "application/x-gzip"})


def test_refuses_v1_body():
    body = json.dumps({"task": "t", "id": "1", "args": [], "kwargs": {}}).encode()
    with pytest.raises(p.LegacyProtocol):
        p.decode(body, content_type="application/json", content_encoding="utf-8", headers={})


@pytest.mark.parametrize("embed", [{"callbacks": [{"task": "x"}]}, {"chain": [{"task": "y"}]},
                                   {"chord": {"task": "z"}}, {"errbacks": [{"task": "e"}]}])
def test_refuses_workflow_embeds(embed):
    body = json.dumps([[], {}, embed]).encode()
    with pytest.raises(p.WorkflowRefused):
        p.decode(body, content_type="application/json", content_encoding="utf-8", headers={"task": "t", "id": "1"})


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1,2]", b'[[],[],{}]', b'["a",{},{}]', b"null",
                                  b'[[{"__type__":"datetime","__value__":"nope"}],{},{}]'])
def test_refuses_undecodable(body):
    with pytest.raises(p.UndecodableBody):
        p.decode(body, content_type="application/json", content_encoding="utf-8", headers={"task": "t", "id": "1"})


def test_refuses_missing_headers_and_expired_and_large():
    with pytest.raises(p.MissingHeader):
        p.decode(b"[[],{},{}]", content_type="application/json", content_encoding="utf-8", headers={})
    with pytest.raises(p.MissingHeader):
        p.decode(b"[[],{},{}]", content_type="application/json", content_encoding="utf-8", headers={"task": "t"})
    env = p.encode_task("t", expires=NOW - dt.timedelta(seconds=1))
    with pytest.raises(p.Expired):
        decode(env)
    with pytest.raises(p.MessageTooLarge):
        decode(p.encode_task("t", ["x" * 2000]), max_bytes=1000)
    with pytest.raises(p.BadHeader):
        p.decode(b"[[],{},{}]", content_type="application/json", content_encoding="utf-8",
                 headers={"task": "t", "id": "1", "timelimit": "soon"})


def test_naive_eta_from_old_producers_means_utc():
    msg = p.decode(b"[[],{},{}]", content_type="application/json", content_encoding="utf-8",
                   headers={"task": "t", "id": "1", "eta": "2026-11-24T12:00:00"})
    assert msg.eta == NOW


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
header_values = json_values | st.binary(max_size=20) | st.datetimes()


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300), headers=st.dictionaries(
    st.sampled_from(["task", "id", "eta", "expires", "retries", "timelimit", "root_id", "origin",
                     "compression", "group"]) | st.text(max_size=10), header_values, max_size=8),
       ctype=st.sampled_from(["application/json", "application/x-python-serialize", "text/plain", None]),
       encoding=st.sampled_from(["utf-8", "binary", None, "latin-1"]))
def test_random_input_only_raises_protocol_errors(body, headers, ctype, encoding):
    try:
        msg = p.decode(body, content_type=ctype, content_encoding=encoding, headers=headers, now=NOW)
    except p.ProtocolError:
        return
    assert isinstance(msg, p.TaskMessage)


@settings(max_examples=300, deadline=None)
@given(args=st.lists(json_values, max_size=5), headers=st.dictionaries(st.text(max_size=10), header_values, max_size=5),
       tagged=st.sampled_from(["datetime", "date", "time", "decimal", "uuid", "bytes", "base64", "weird"]),
       value=json_values)
def test_structurally_valid_bodies_with_odd_values(args, headers, tagged, value):
    body = json.dumps([args + [{"__type__": tagged, "__value__": value}], {}, {}]).encode()
    headers = {**headers, "task": "t", "id": "x"}
    try:
        p.decode(body, content_type="application/json", content_encoding="utf-8", headers=headers, now=NOW)
    except p.ProtocolError:
        pass


def test_generated_task_ids_are_version_4_uuids_in_celerys_form():
    ids = [p.new_task_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert p.encode_task("t").task_id != p.encode_task("t").task_id
