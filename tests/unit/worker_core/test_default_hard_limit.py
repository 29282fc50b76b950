"""Defect 9: with nothing configured, every task still gets a hard time limit, below RabbitMQ's
default consumer timeout (1800 s). Only long-standing APIs here, so this test also runs against
the code from before the default existed (and fails there: the limit was None)."""

from __future__ import annotations

from utilitarian.config import parse_config
from utilitarian.supervisor.plan import WorkerOptions, build_plan


def test_without_any_setting_a_pool_still_has_a_hard_limit_below_the_consumer_timeout():
    (pool,) = build_plan(parse_config({}), WorkerOptions(queues=("default",))).pools
    assert pool.hard_time_limit is not None and pool.hard_time_limit < 1800.0
