"""The cleanup queue: retention of readings, events, staged readings and run records in bounded
batches (daily by beat), and release of interface blocks whose lease ran out (every 5 minutes)."""

from __future__ import annotations

import datetime as dt
import logging
import time

from utilitarian import queues
from utilitarian.amr.store import StoreError
from utilitarian.amr.tasks.common import settings_of, store_of, utc_now
from utilitarian.tasks import task

log = logging.getLogger(__name__)


def retention_plan(settings, now: dt.datetime) -> list[tuple[str, dt.datetime]]:
    """(table, delete rows older than) for every retention that is set."""
    days = lambda d: now - dt.timedelta(days=d)  # noqa: E731
    plan = []
    if settings.data_retention_days is not None:
        plan += [("meter_reading", days(settings.data_retention_days)),
                 ("meter_system_event", days(settings.data_retention_days))]
    plan.append(("staged_meter_reading", days(settings.staged_data_retention_days)))
    plan += [("amr_task_run", days(settings.run_retention_days)),
             ("amr_round", days(settings.run_retention_days))]
    return plan


@task("cleanup.apply_retention", queue=queues.CLEANUP, bind=True, max_retries=3, retry_backoff=30.0,
      retry_for=(StoreError,))
def apply_retention(ctx, max_batches: int = 200) -> dict:
    """Delete what `[amr]` retention says is too old, `cleanup_batch_size` rows per transaction so
    writers are never locked out for long; past `max_batches` the task re-sends itself."""
    store = store_of(ctx.app)
    settings = settings_of(ctx.app)
    now = utc_now()
    deleted: dict[str, int] = {}
    batches = 0
    for table, before in retention_plan(settings, now):
        while batches < max_batches:
            count = store.delete_older(table, before, batch=settings.cleanup_batch_size)
            batches += 1
            deleted[table] = deleted.get(table, 0) + count
            if count < settings.cleanup_batch_size:
                break
    released = store.release_stale_blocks(now=time.time())
    if batches >= max_batches:
        log.info("retention: %d batches done, more to delete; continuing in a new task", batches)
        ctx.send_task(ctx.name, kwargs={"max_batches": max_batches}, queue=queues.CLEANUP)
    if any(deleted.values()):
        log.info("retention deleted %s", ", ".join(f"{n:,} {t}" for t, n in deleted.items() if n))
    return {"deleted": deleted, "released_blocks": released}


@task("cleanup.release_stale_blocks", queue=queues.CLEANUP, bind=True, max_retries=1, retry_for=(StoreError,))
def release_stale_blocks(ctx) -> dict:
    """Interface blocks whose holder died (lease expired) stop blocking now, not at the next try."""
    released = store_of(ctx.app).release_stale_blocks(now=time.time())
    if released:
        log.warning("released %d interface blocks whose holders stopped renewing them", released)
    return {"released": released}
