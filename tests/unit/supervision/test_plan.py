"""`build_plan`: what a worker runs, from the command line over a `[workers.<profile>]` table over
`[worker]` defaults; bad combinations are refused with the key or flag that is wrong."""

from __future__ import annotations

import os

import pytest

from utilitarian import queues
from utilitarian.config import parse_config
from utilitarian.errors import ConfigError, UsageError
from utilitarian.supervisor.plan import WorkerOptions, build_plan

WORKER = {"threads": 6, "queue_threads": {"amr": 20}, "graceful_timeout": 12.0, "max_tasks_per_child": 100,
          "max_memory_per_child": 300.0, "hard_time_limit": 60.0, "heartbeat_timeout": 9.0, "imports": ["site.tasks"]}
PROFILES = {"daily": {"pools": [
    {"name": "polls", "queues": ["amr.scheduled.daily"], "processes": 3, "threads": 16, "hard_time_limit": 120.0},
    {"queues": ["commits", "default"], "processes": 1, "max_tasks_per_child": 0}],
    "graceful_timeout": 45.0, "exit_when_idle": 30.0, "imports": ["site.amr"]}}


def config(**worker):
    return parse_config({"worker": {**WORKER, **worker}, "workers": PROFILES}, file="u.toml")


def test_command_line_pool_takes_worker_defaults():
    plan = build_plan(config(processes=4), WorkerOptions(queues=("default", "amr")))
    (pool,) = plan.pools
    assert pool.name == "main" and pool.queues == (queues.DEFAULT, queues.AMR)
    assert (pool.processes, pool.threads) == (4, 20)  # the largest per-queue default
    assert (pool.max_tasks_per_child, pool.max_memory_per_child, pool.hard_time_limit) == (100, 300.0, 60.0)
    assert (plan.graceful_timeout, plan.exit_when_idle, plan.heartbeat_timeout) == (12.0, None, 9.0)
    assert plan.imports == ("site.tasks",) and plan.name.startswith("worker@")


def test_without_queues_a_worker_consumes_all_14_and_defaults_to_one_process_per_cpu():
    plan = build_plan(config(), WorkerOptions())
    assert plan.pools[0].queues == queues.QUEUES and len(queues.QUEUES) == 14
    assert plan.pools[0].processes == (os.cpu_count() or 1)


FLAGS = [  # options -> (field of the first pool or plan, expected)
    (dict(processes=2), "processes", 2),
    (dict(threads=3), "threads", 3),
    (dict(max_tasks_per_child=0), "max_tasks_per_child", 0),  # 0 on the command line wins over 100
    (dict(max_memory_per_child=50.0), "max_memory_per_child", 50.0),
    (dict(hard_time_limit=5.0), "hard_time_limit", 5.0),
    (dict(graceful_timeout=1.0), "graceful_timeout", 1.0),
    (dict(exit_when_idle=7.0), "exit_when_idle", 7.0),
    (dict(includes=("x.y",)), "imports", ("site.tasks", "x.y")),
    (dict(name="n@h"), "name", "n@h"),
]


@pytest.mark.parametrize("opts,key,value", FLAGS)
def test_command_line_flags_win(opts, key, value):
    plan = build_plan(config(), WorkerOptions(queues=("default",), **opts))
    target = plan if hasattr(plan, key) else plan.pools[0]
    assert getattr(target, key) == value


def test_a_profile_gives_pools_and_the_command_line_still_wins():
    plan = build_plan(config(), WorkerOptions(profile="daily"))
    polls, second = plan.pools
    assert (polls.name, polls.queues, polls.processes, polls.threads) == ("polls", (queues.AMR_DAILY,), 3, 16)
    assert polls.hard_time_limit == 120.0 and polls.max_tasks_per_child == 100
    assert (second.name, second.threads, second.max_tasks_per_child) == ("pool1", 6, 0)
    assert (plan.graceful_timeout, plan.exit_when_idle, plan.profile) == (45.0, 30.0, "daily")
    assert plan.imports == ("site.tasks", "site.amr") and plan.name.startswith("daily@")
    plan = build_plan(config(), WorkerOptions(profile="daily", threads=2, processes=1, exclude=("default",)))
    assert [(p.threads, p.processes, p.queues) for p in plan.pools] == [
        (2, 1, (queues.AMR_DAILY,)), (2, 1, (queues.COMMITS,))]


def test_prefetch_is_threads_times_the_multiplier_from_flag_pool_or_worker_default():
    # Given the default multiplier (4), a [worker] one, a pool's own and the command line's
    assert build_plan(config(), WorkerOptions(queues=("default",))).pools[0].prefetch == 6 * 4
    assert build_plan(config(prefetch_multiplier=1.5), WorkerOptions(queues=("default",))).pools[0].prefetch == 9
    profiles = {"daily": {"pools": [{"queues": ["amr.scheduled.daily"], "threads": 100, "prefetch_multiplier": 1.0},
                                    {"queues": ["commits"], "threads": 3}]}}
    cfg = parse_config({"worker": {**WORKER, "prefetch_multiplier": 2.0}, "workers": profiles}, file="u.toml")
    # Then the pool's own wins over [worker], the flag over both, and a child never holds fewer
    # messages than it has threads (rounded up)
    assert [p.prefetch for p in build_plan(cfg, WorkerOptions(profile="daily")).pools] == [100, 6]
    assert [p.prefetch for p in build_plan(cfg, WorkerOptions(profile="daily", prefetch_multiplier=1.5)).pools] == \
        [150, 5]


def test_a_prefetch_multiplier_below_one_is_refused_with_its_key():
    with pytest.raises(ConfigError) as err:
        config(prefetch_multiplier=0.5)
    assert "worker.prefetch_multiplier" in str(err.value)


REFUSED = [
    (dict(profile="daily", queues=("default",)), UsageError, "-Q and --profile exclude each other"),
    (dict(profile="weekly"), ConfigError, "workers.weekly"),
    (dict(queues=("nosuch",)), UsageError, "-Q"),
    (dict(queues=("default",), exclude=("nosuch",)), UsageError, "-X"),
    (dict(queues=("default",), exclude=("default",)), UsageError, "no queues left"),
]


@pytest.mark.parametrize("opts,error,text", REFUSED)
def test_refused(opts, error, text):
    with pytest.raises(error, match=text):
        build_plan(config(), WorkerOptions(**opts))


def test_with_processes_changes_one_pool():
    plan = build_plan(config(), WorkerOptions(profile="daily"))
    assert [p.processes for p in plan.with_processes("polls", 7).pools] == [7, 1]
    assert plan.queues == (queues.AMR_DAILY, queues.COMMITS, queues.DEFAULT)
