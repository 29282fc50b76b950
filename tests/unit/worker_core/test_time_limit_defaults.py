"""Every task has a hard time limit by default, below RabbitMQ's consumer timeout: from the
`[worker]` default, a profile's pool, or the command line, in that order of precedence."""

from __future__ import annotations

import logging

import pytest

from utilitarian.config import DEFAULT_HARD_TIME_LIMIT, RABBITMQ_CONSUMER_TIMEOUT, parse_config
from utilitarian.supervisor.plan import WorkerOptions, build_plan


def plan_for(raw: dict, **opts):
    return build_plan(parse_config(raw), WorkerOptions(**opts))


def test_the_default_is_below_the_broker_consumer_timeout():
    assert DEFAULT_HARD_TIME_LIMIT == 1500.0 < RABBITMQ_CONSUMER_TIMEOUT


PROFILE = {"workers": {"p": {"pools": [{"queues": ["default"]}, {"queues": ["amr"], "hard_time_limit": 90.0}]}}}


@pytest.mark.parametrize("raw, opts, limits", [
    ({}, {"queues": ("default",)}, [DEFAULT_HARD_TIME_LIMIT]),  # nothing configured: still a limit
    ({"worker": {"hard_time_limit": 600.0}}, {"queues": ("default",)}, [600.0]),
    ({"worker": {"hard_time_limit": 600.0}}, {"queues": ("default",), "hard_time_limit": 30.0}, [30.0]),
    (PROFILE, {"profile": "p"}, [DEFAULT_HARD_TIME_LIMIT, 90.0]),
    ({**PROFILE, "worker": {"hard_time_limit": 700.0}}, {"profile": "p"}, [700.0, 90.0]),
    (PROFILE, {"profile": "p", "hard_time_limit": 5.0}, [5.0, 5.0]),
])
def test_pools_get_a_hard_limit(raw, opts, limits):
    assert [p.hard_time_limit for p in plan_for(raw, **opts).pools] == limits


def test_a_limit_not_below_the_consumer_timeout_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="utilitarian.supervisor.plan"):
        plan_for({"worker": {"hard_time_limit": 3600.0}}, queues=("default",))
    assert any("consumer_timeout" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="utilitarian.supervisor.plan"):
        plan_for({}, queues=("default",))
    assert not caplog.records

