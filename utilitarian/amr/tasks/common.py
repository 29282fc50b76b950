"""What every AMR task module shares: the process's store, settings and meter types (App resources,
built after the fork), chunking, and how the tasks read the clock."""

from __future__ import annotations

import datetime as dt
import logging
import random
from typing import Iterator, Sequence, TypeVar

from utilitarian.amr.settings import AmrConfig
from utilitarian.amr.store import store_for
from utilitarian.errors import ConfigError
from utilitarian.tasks import Defer

UTC = dt.timezone.utc
T = TypeVar("T")
log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    """The tasks' clock; store and progress functions take `now` so tests can pass their own."""
    return dt.datetime.now(UTC)


def settings_of(app) -> AmrConfig:
    amr = getattr(app.config, "amr", None)
    return amr if isinstance(amr, AmrConfig) else AmrConfig()


def store_of(app):
    """The process's store. One it cannot use yet (schema behind or ahead of this release while
    `db migrate` runs during an upgrade, a SQLite store claimed by another host) defers the job
    instead of failing it: those ConfigErrors were "not retryable", so every job of a round was
    dead-lettered while a migration lagged (issue 11 item 6). Static mistakes in `[database]` never
    get here: `utilitarian.validation` refuses them when the worker starts (exit 78)."""
    try:
        store = store_for(app)
    except ConfigError as exc:
        wait = settings_of(app).store_unready_retry
        _note_store_state(f"{exc.reason}; jobs that need the store are deferred by {wait:g}s each time "
                          f"until it is ready (`utilitarian status` counts them as deferred)")
        raise Defer(f"store not ready: {exc.reason}", countdown=wait * random.uniform(0.75, 1.25)) from None
    if _store_state[0] is not None:
        _note_store_state(None)
    return store


_store_state: list[str | None] = [None]  # the last thing said about the store (one line per change)


def _note_store_state(problem: str | None) -> None:
    if problem == _store_state[0]:
        return
    if problem is not None:
        log.warning("AMR store not ready: %s", problem)
    else:
        log.warning("AMR store ready again: deferred jobs run at their next attempt")
    _store_state[0] = problem


def meter_types_of(app) -> dict:
    """Built-in register maps plus the site's `[meter_types.*]` (validated at config load)."""
    def build(a):
        from utilitarian.amr.meter_types import load_registered_meter_types, parse_meter_types

        types = dict(load_registered_meter_types())
        if a.config.meter_types:
            types.update(parse_meter_types(a.config.meter_types, file=a.config.source or "<config>"))
        return types

    return app.resource("amr.meter_types", build)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]
