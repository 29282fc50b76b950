"""What every AMR task module shares: the process's store, settings and meter types (App resources,
built after the fork), chunking, and how the tasks read the clock."""

from __future__ import annotations

import datetime as dt
from typing import Iterator, Sequence, TypeVar

from utilitarian.amr.settings import AmrConfig

UTC = dt.timezone.utc
T = TypeVar("T")


def utc_now() -> dt.datetime:
    """The tasks' clock; store and progress functions take `now` so tests can pass their own."""
    return dt.datetime.now(UTC)


def settings_of(app) -> AmrConfig:
    amr = getattr(app.config, "amr", None)
    return amr if isinstance(amr, AmrConfig) else AmrConfig()


def store_of(app):
    from utilitarian.amr.store import store_for

    return store_for(app)


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
