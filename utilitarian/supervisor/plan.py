"""What a worker runs: pools (queues x processes x threads, limits) from the command line or a
`[workers.<profile>]` table, with command-line flags over profile over `[worker]` defaults."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from dataclasses import dataclass

from utilitarian import queues as q
from utilitarian.config import DEFAULT_HARD_TIME_LIMIT, RABBITMQ_CONSUMER_TIMEOUT
from utilitarian.errors import ConfigError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSpec:
    name: str
    queues: tuple[str, ...]
    processes: int
    threads: int
    max_tasks_per_child: int = 0  # 0 = unlimited
    max_memory_per_child: float = 0.0  # MiB, 0 = unlimited
    hard_time_limit: float | None = DEFAULT_HARD_TIME_LIMIT  # tasks without a limit of their own
    prefetch_multiplier: float = 1.0  # unacked messages a child holds = threads x this

    @property
    def prefetch(self) -> int:
        """The channel's prefetch: at least one message per thread, rounded up."""
        return max(self.threads, math.ceil(self.threads * self.prefetch_multiplier))


@dataclass(frozen=True)
class WorkerPlan:
    name: str  # node name, e.g. amr-daily@host
    profile: str | None
    pools: tuple[PoolSpec, ...]
    graceful_timeout: float
    exit_when_idle: float | None
    heartbeat_timeout: float
    imports: tuple[str, ...]

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for pool in self.pools for name in pool.queues))

    def with_processes(self, pool_name: str, processes: int) -> "WorkerPlan":
        pools = tuple(dataclasses.replace(p, processes=processes) if p.name == pool_name else p
                      for p in self.pools)
        return dataclasses.replace(self, pools=pools)


@dataclass(frozen=True)
class WorkerOptions:
    """The command line's say; None means "not given"."""

    queues: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    processes: int | None = None
    threads: int | None = None
    prefetch_multiplier: float | None = None
    profile: str | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: float | None = None
    hard_time_limit: float | None = None
    graceful_timeout: float | None = None
    exit_when_idle: float | None = None
    includes: tuple[str, ...] = ()
    name: str | None = None


def _resolve_all(names, flag: str) -> tuple[str, ...]:
    out = []
    for name in names:
        full = q.resolve(name)
        if full is None:
            raise UsageError(f"{flag}: {q.check_queue(name)}")
        out.append(full)
    return tuple(dict.fromkeys(out))


def build_plan(config, opts: WorkerOptions) -> WorkerPlan:
    w = config.worker
    cpus = os.cpu_count() or 1
    if opts.profile and opts.queues:
        raise UsageError("-Q and --profile exclude each other: a profile names its queues")
    if opts.profile:
        profile = config.workers.get(opts.profile)
        if profile is None:
            known = ", ".join(sorted(config.workers)) or "none defined"
            raise ConfigError(f"no such worker profile (known: {known})", file=config.source,
                              key=f"workers.{opts.profile}")
        excluded = set(_resolve_all(opts.exclude, "-X"))
        pools = []
        for i, pool in enumerate(profile.pools):
            names = tuple(n for n in _resolve_all(pool.queues, f"workers.{opts.profile}.pools[{i}].queues")
                          if n not in excluded)
            if not names:
                continue
            pools.append(PoolSpec(
                name=pool.name or f"pool{i}",
                queues=names,
                processes=opts.processes or pool.processes,
                threads=opts.threads or pool.threads or config.threads_for(list(names)),
                max_tasks_per_child=_first(opts.max_tasks_per_child, pool.max_tasks_per_child, w.max_tasks_per_child),
                max_memory_per_child=_first(opts.max_memory_per_child, pool.max_memory_per_child,
                                            w.max_memory_per_child),
                hard_time_limit=_first(opts.hard_time_limit, pool.hard_time_limit, w.hard_time_limit),
                prefetch_multiplier=_first(opts.prefetch_multiplier, pool.prefetch_multiplier,
                                           w.prefetch_multiplier)))
        graceful = _first(opts.graceful_timeout, profile.graceful_timeout, w.graceful_timeout)
        idle = _first(opts.exit_when_idle, profile.exit_when_idle)
        imports = tuple(w.imports) + tuple(profile.imports) + tuple(opts.includes)
    else:
        names = _resolve_all(opts.queues, "-Q") if opts.queues else q.QUEUES
        excluded = set(_resolve_all(opts.exclude, "-X"))
        names = tuple(n for n in names if n not in excluded)
        pools = [PoolSpec(
            name="main", queues=names,
            processes=opts.processes or w.processes or cpus,
            threads=opts.threads or config.threads_for(list(names)),
            max_tasks_per_child=_first(opts.max_tasks_per_child, w.max_tasks_per_child),
            max_memory_per_child=_first(opts.max_memory_per_child, w.max_memory_per_child),
            hard_time_limit=_first(opts.hard_time_limit, w.hard_time_limit),
            prefetch_multiplier=_first(opts.prefetch_multiplier, w.prefetch_multiplier))] if names else []
        graceful = _first(opts.graceful_timeout, w.graceful_timeout)
        idle = opts.exit_when_idle
        imports = tuple(w.imports) + tuple(opts.includes)
    if not pools:
        raise UsageError("no queues left to consume (check -Q/-X and the profile)")
    pools = [dataclasses.replace(p, hard_time_limit=p.hard_time_limit or DEFAULT_HARD_TIME_LIMIT) for p in pools]
    for pool in pools:
        if pool.hard_time_limit >= RABBITMQ_CONSUMER_TIMEOUT:
            log.warning("pool %s: hard_time_limit %.0fs is not below RabbitMQ's default consumer_timeout "
                        "(%.0fs): unless the broker's was raised, it closes the channel first and redelivers "
                        "every message of that child", pool.name, pool.hard_time_limit, RABBITMQ_CONSUMER_TIMEOUT)
    name = opts.name or f"{opts.profile or 'worker'}@{socket.gethostname()}"
    return WorkerPlan(name=name, profile=opts.profile, pools=tuple(pools), graceful_timeout=graceful,
                      exit_when_idle=idle, heartbeat_timeout=w.heartbeat_timeout,
                      imports=tuple(dict.fromkeys(imports)))


def _first(*values):
    for value in values:
        if value is not None:
            return value
    return None
