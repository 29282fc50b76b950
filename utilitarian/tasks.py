"""Task definitions: the `@task` decorator, per-task retry policy and time limits, the registry
that routes task names to queues, and `TaskCall` (one task to send). Unknown names are refused,
never imported. Imports nothing that talks to a broker: `utilitarian.app` builds on this."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from utilitarian import queues, steps
from utilitarian.errors import ConfigError
from utilitarian.protocol import UnknownTask

log = logging.getLogger(__name__)

# Modules every worker imports. Packages add theirs through the `utilitarian.tasks` entry-point
# group (utilitarian.plugins; our AMR tasks come that way); a site may also name modules with
# `-I` / `[worker] imports`.
BUILTIN_TASK_MODULES = ("utilitarian.builtin_tasks",)


class Retry(Exception):
    """Raised by a task to ask for a retry (bounded by its policy's max_retries)."""

    def __init__(self, reason: str = "retry requested", *, countdown: float | None = None):
        super().__init__(reason)
        self.countdown = countdown


class Defer(Exception):
    """Raised by a task that cannot run yet (its meter interface is busy): the message goes back
    through the delay levels with the same id and retry count. Bounded by MAX_DEFERRALS."""

    def __init__(self, reason: str = "deferred", *, countdown: float = 5.0):
        super().__init__(reason)
        self.countdown = countdown


MAX_DEFERRALS = 1000  # a job deferred this often is dead-lettered: something holds its resource


class Reject(Exception):
    """Raised by a task for input that will never succeed: dead-lettered at once, no retry."""


@dataclass(frozen=True)
class Decision:
    action: str  # "retry" or "dead_letter"
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap; the defaults suit meter polls."""

    max_retries: int = 3
    backoff: float = 2.0  # seconds before the first retry; doubled each time
    backoff_max: float = 600.0
    jitter: bool = True
    retry_for: tuple[type[BaseException], ...] = (Exception,)

    def delay_for(self, retries: int, rng: random.Random | None = None) -> float:
        delay = min(self.backoff_max, self.backoff * (2.0 ** retries))
        if self.jitter and delay > 0:
            # "Equal jitter": at least half the delay, so retries never bunch at zero.
            delay = delay / 2 + (rng or random).uniform(0, delay / 2)
        return delay

    def decide(self, exc: BaseException, retries: int, rng: random.Random | None = None) -> Decision:
        """What to do after attempt number `retries` (0 = first run) raised `exc`."""
        if isinstance(exc, Reject):
            return Decision("dead_letter", reason="rejected")
        explicit = isinstance(exc, Retry)
        if not explicit and not isinstance(exc, self.retry_for):
            return Decision("dead_letter", reason="not retryable")
        if retries >= self.max_retries:
            return Decision("dead_letter", reason=f"failed after {retries + 1} attempts")
        if explicit and exc.countdown is not None:
            return Decision("retry", delay=max(0.0, exc.countdown))
        return Decision("retry", delay=self.delay_for(retries, rng))


@dataclass(frozen=True)
class TaskCall:
    """One task to send; `queue=None` routes by the registry and `[tasks]` overrides."""

    name: str
    args: tuple | list = ()
    kwargs: Mapping[str, Any] | None = None
    queue: str | None = None
    task_id: str | None = None
    countdown: float | None = None
    eta: dt.datetime | None = None
    expires: dt.datetime | float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    retries: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    extra_headers: Mapping[str, Any] | None = field(default=None)


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task's thread when its soft time limit passes (it may clean up and exit)."""


@dataclass(frozen=True)
class TaskContext:
    """What a `bind=True` task receives first: who it is and the process's App (config,
    routing, confirmed publisher, per-process resources such as the store)."""

    id: str
    name: str
    retries: int
    queue: str
    app: Any
    headers: Any = dataclasses.field(default_factory=dict, repr=False)
    eta: Any = None
    expires: Any = None

    def send_tasks(self, calls) -> list[str]:
        """Publish follow-up tasks (pipelined confirms) with this task as their parent (calls that
        name a parent of their own keep it). The App fills the parent in as it encodes: a copy of
        each call (dataclasses.replace) cost more than its encoding."""
        return self.app.send_tasks(calls, parent_id=self.id, root_id=self.headers.get("root_id") or self.id)

    def send_task(self, name: str, args=(), kwargs=None, **options) -> str:
        return self.send_tasks([TaskCall(name, args, kwargs, **options)])[0]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: Callable[..., Any]
    queue: str
    retry: RetryPolicy = RetryPolicy()
    soft_time_limit: float | None = None
    time_limit: float | None = None
    bind: bool = False  # the function takes a TaskContext as first argument
    # Called as on_failure(ctx, exc, args, kwargs) when the worker gives up on the task (last
    # retry failed, not retryable, or past its hard limit), before it is dead-lettered.
    on_failure: Callable[..., None] | None = None
    # A stepwise task (written as a generator function, see steps.py): the generator function, which
    # the worker drives with its waits parked; `func` drives the same generator blocking.
    steps: Callable[..., Any] | None = None


def task(name: str, *, queue: str = queues.DEFAULT, bind: bool = False, max_retries: int = 3,
         retry_backoff: float = 2.0, retry_backoff_max: float = 600.0, retry_jitter: bool = True,
         retry_for: tuple[type[BaseException], ...] = (Exception,), soft_time_limit: float | None = None,
         time_limit: float | None = None, on_failure: Callable[..., None] | None = None) -> Callable:
    """Mark a function as a task. Marking only: the Registry collects marked functions from the
    modules it is told to import, so there is no import-time global to keep in sync."""
    full_queue = queues.resolve(queue)
    if full_queue is None:
        raise ValueError(f"task {name!r}: unknown queue {queue!r}")
    policy = RetryPolicy(max_retries, retry_backoff, retry_backoff_max, retry_jitter, tuple(retry_for))

    def mark(func: Callable) -> Callable:
        genfunc = None
        if steps.is_steps_function(func):
            # Called directly (tests, scripts) it still returns its result, not a generator.
            genfunc, func = func, steps.stepwise(func)
        func.__task_spec__ = TaskSpec(name, func, full_queue, policy, soft_time_limit, time_limit, bind, on_failure,
                                      genfunc)
        return func

    return mark


class Registry:
    """Task name -> TaskSpec, with the site's `[tasks."name"]` overrides applied."""

    def __init__(self, specs: Iterable[TaskSpec] = ()):
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: TaskSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None and existing.func is not spec.func:
            raise ValueError(f"task name {spec.name!r} is defined twice")
        self._specs[spec.name] = spec

    @classmethod
    def from_modules(cls, names: Iterable[str], *, source: str | None = None) -> "Registry":
        registry = cls()
        for name in dict.fromkeys(names):
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise ConfigError(f"cannot import task module {name!r}: {exc}", file=source,
                                  key="worker.imports") from None
            for value in vars(module).values():
                spec = getattr(value, "__task_spec__", None)
                if isinstance(spec, TaskSpec):
                    registry.add(spec)
        return registry

    @classmethod
    def for_config(cls, config, extra_modules: Iterable[str] = ()) -> "Registry":
        """Built-in tasks + `[worker] imports` + `extra_modules`, with `[tasks]` overrides."""
        from utilitarian.plugins import task_modules

        names = list(BUILTIN_TASK_MODULES) + task_modules() + list(config.worker.imports) + list(extra_modules)
        return cls.from_modules(names, source=config.source).configured(config)

    def configured(self, config) -> "Registry":
        errors = []
        out = Registry()
        for name, spec in self._specs.items():
            opts = config.tasks.get(name)
            out.add(apply_options(spec, opts) if opts else spec)
        for name in config.tasks:
            if name not in self._specs:
                errors.append(name)
        if errors:
            import difflib

            name = errors[0]
            close = difflib.get_close_matches(name, list(self._specs), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown task{hint}", file=config.source, key=f'tasks."{name}"')
        return out

    def get(self, name: str) -> TaskSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise UnknownTask(f"task {name!r} is not registered in this worker")
        return spec

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def route(self, name: str, config=None) -> str:
        """Queue for a task name: `[tasks."name"] queue`, then the decorator's, then default."""
        if config is not None:
            opts = config.tasks.get(name)
            if opts is not None and opts.queue:
                return queues.resolve(opts.queue) or opts.queue
        spec = self._specs.get(name)
        return spec.queue if spec else queues.DEFAULT


def apply_options(spec: TaskSpec, opts) -> TaskSpec:
    retry = spec.retry
    changes = {k: v for k, v in (("max_retries", opts.max_retries), ("backoff", opts.retry_backoff),
                                 ("backoff_max", opts.retry_backoff_max), ("jitter", opts.retry_jitter))
               if v is not None}
    if changes:
        retry = dataclasses.replace(retry, **changes)
    return dataclasses.replace(
        spec, retry=retry, queue=queues.resolve(opts.queue) if opts.queue else spec.queue,
        soft_time_limit=opts.soft_time_limit if opts.soft_time_limit is not None else spec.soft_time_limit,
        time_limit=opts.time_limit if opts.time_limit is not None else spec.time_limit)
