"""generic_corus against the simulated Corus (written from the protocol description, its own CRC
and encoders): the platform's documented calls and kwargs, over TCP and a pty, and the faults an
operator meets: a checksum error (repeated, then given up), a wrong password, slow answers, a
garbled answer. Limits: the password exchange and the option select follow what the platform's
client sends; the layouts are the classic firmware b0040 ones (MID layouts are decoded by unit
tests only)."""

from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone

import pytest

from utilitarian.amr.environments import run_task_call
from utilitarian.amr.errors import (BadTaskCall, MeterAuthenticationError, MeterChecksumError,
                                    MeterProtocolError, MeterTimeout)
from utilitarian.amr.target import parse_meter_url
from utilitarian_sim import CorusSimulator, SimCorusMeter
from utilitarian_sim.faults import Faults

UTC = timezone.utc
# The platform's documented invoke bodies for generic_corus, verbatim (Python-literal syntax:
# the docs quote strings with ' and leave trailing commas).
DOCS_READ_PARAMETERS = """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_parameters",
    "task_kwargs": {
        "parameters": ["index_converted", "index_unconverted"],
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_corus"
}"""
DOCS_READ_BY_OFFSET = """{
    "meter_device": "890b61bb-6594-48db-ad90-584d56754455",
    "task_call": "read_database_by_offset_seconds",
    "task_kwargs": {
        "offset_seconds": 1000,
        "database": 'hourly',
    },
    "run_offset_seconds": 0,
    "meter_execution_type": "generic_corus"
}"""


def call(url: str, task_call: str, kwargs: dict, *, secret=None, **params):
    query = "&".join(f"{k}={v}" for k, v in {"timeout": "2", **params}.items())
    return run_task_call("generic_corus", task_call, parse_meter_url(f"{url}?{query}", secret=secret), kwargs)


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_docs_examples_and_every_database(transport):
    body = ast.literal_eval(DOCS_READ_PARAMETERS)
    with CorusSimulator([SimCorusMeter()], transport=transport) as sim:
        params = call(sim.url(), body["task_call"], body["task_kwargs"])
        hourly = call(sim.url(), "read_database", {"database": "hourly",
                                                   "start_date": (datetime.now(UTC) - timedelta(hours=3)).isoformat()})
        monthly = call(sim.url(), "read_database", {"database": "monthly"})
    assert {r.series for r in params.readings} == {"index_converted", "index_unconverted"}
    converted = {r.series: float(r.value) for r in params.readings}
    assert converted["index_converted"] == pytest.approx(converted["index_unconverted"] * 1.5, rel=1e-6)
    stamps = sorted({r.timestamp for r in hourly.readings})
    assert len(stamps) == 3 and all(s.minute == 0 for s in stamps)
    by_series = {r.series: r.value for r in hourly.readings if r.timestamp == stamps[-1]}
    assert by_series["consumption_unconverted_hourly"] == "2.5"        # 25 pulses of 0.1 m3
    assert by_series["pressure_hourly_average"] == "1.03" and by_series["temperature_hourly_maximum"] == "12.10"
    assert "record_duration" not in by_series and "status" not in by_series
    assert {r.series for r in monthly.readings} >= {"index_unconverted", "consumption_converted_monthly_maximum"}


def test_range_either_order_and_offset_by_device_clock():
    # The device clock runs 3 h behind: "the last 1000 s" is counted back from its own clock.
    with CorusSimulator([SimCorusMeter(clock_offset=-3 * 3600)]) as sim:
        model = sim.models[0]
        now = model.now_utc()
        body = ast.literal_eval(DOCS_READ_BY_OFFSET)
        by_offset = call(sim.url(), body["task_call"], {**body["task_kwargs"], "offset_seconds": 2 * 3600})
        newest_first = call(sim.url(), "read_database", {"database": "interval",
                                                         "start_date": (now - timedelta(hours=1)).isoformat(),
                                                         "end_date": (now - timedelta(hours=2)).isoformat()})
        oldest_first = call(sim.url(), "read_database", {"database": "interval",
                                                         "start_date": (now - timedelta(hours=2)).isoformat(),
                                                         "end_date": (now - timedelta(hours=1)).isoformat()})
    offset_stamps = sorted({r.timestamp for r in by_offset.readings})
    assert len(offset_stamps) == 2 and now - timedelta(hours=2) <= offset_stamps[0] <= now
    assert newest_first.readings == oldest_first.readings
    assert len({r.timestamp for r in newest_first.readings}) in (4, 5)   # 15-min records of one hour


def test_set_time_corrects_only_past_the_drift():
    with CorusSimulator([SimCorusMeter(clock_offset=-120)]) as sim:
        model = sim.models[0]
        kept = call(sim.url(), "set_time", {"allowed_drift_seconds": 300})
        assert model.writes == [] and kept.events == ()
        fixed = call(sim.url(), "set_time", {"allowed_drift_seconds": 60})
        assert abs((model.now_utc() - datetime.now(UTC)).total_seconds()) < 3
    assert [e.title for e in fixed.events] == ["Time adjusted"] and "behind" in fixed.events[0].content


def test_wrong_password_is_an_authentication_error_and_the_secret_is_not_shown():
    with CorusSimulator([SimCorusMeter(password="S3cret99")]) as sim:
        with pytest.raises(MeterAuthenticationError, match="password refused") as info:
            call(sim.url(), "read_parameters", {"parameters": ["battery_days"]}, secret="wrong123")
        assert "wrong123" not in str(info.value) and "S3cret99" not in str(info.value)
        good = call(sim.url(), "read_parameters", {"parameters": ["battery_days"]}, secret="S3cret99")
    assert [r.value for r in good.readings] == ["1795"]


def test_checksum_error_is_repeated_then_given_up():
    once = Faults(script=("bad_bcc",))
    always = Faults(bad_bcc=1.0)
    with CorusSimulator([SimCorusMeter(faults=once), SimCorusMeter(faults=always)]) as sim:
        repaired = call(sim.url(0), "read_parameters", {"parameters": ["battery_days"]})
        with pytest.raises(MeterChecksumError, match="CRC still wrong after 2 repeats"):
            call(sim.url(1), "read_parameters", {"parameters": ["battery_days"]}, retries=2)
    assert [r.value for r in repaired.readings] == ["1795"]


def test_slow_garbled_and_silent_answers():
    with CorusSimulator([SimCorusMeter(faults=Faults(latency=0.4)), SimCorusMeter(faults=Faults(garble=1.0)),
                         SimCorusMeter(faults=Faults(timeout=1.0))]) as sim:
        slow = call(sim.url(0), "read_parameters", {"parameters": ["battery_days"]}, timeout=3)
        with pytest.raises(MeterTimeout):
            call(sim.url(0), "read_parameters", {"parameters": ["battery_days"]}, timeout=0.2)
        with pytest.raises((MeterProtocolError, MeterChecksumError, MeterTimeout)):
            call(sim.url(1), "read_parameters", {"parameters": ["battery_days"]}, timeout=1)
        with pytest.raises(MeterTimeout):
            call(sim.url(2), "read_parameters", {"parameters": ["battery_days"]}, timeout=0.5)
    assert [r.value for r in slow.readings] == ["1795"]


def test_bad_calls_are_refused_before_any_io():
    target = parse_meter_url("corus+tcp://127.0.0.1:9")
    with pytest.raises(BadTaskCall, match="unknown 'index_convrted'.*did you mean 'index_converted'"):
        run_task_call("generic_corus", "read_parameters", target, {"parameters": ["index_convrted"]})
    with pytest.raises(BadTaskCall, match="must be one of interval, hourly, daily, monthly"):
        run_task_call("generic_corus_meter", "read_database_by_date", target, {"database": "weekly"})
    with pytest.raises(BadTaskCall, match="cannot drive a corus meter"):
        run_task_call("generic_lis200", "set_time", target, {})
