"""The cleanup queue: retention of readings, events, staged readings and run records in bounded
batches (daily by beat), release of interface blocks whose lease ran out, and publishing of outbox
rows whose committing task gave up (every 5 minutes)."""

from __future__ import annotations

import datetime as dt
import logging

from utilitarian import queues
from utilitarian.amr.store import StoreError
from utilitarian.amr.tasks.common import settings_of, store_of, utc_now
from utilitarian.errors import BrokerError
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
      retry_for=(StoreError, BrokerError))
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
    released = store.release_stale_blocks()
    if store.staged_meter_names():
        # staged readings of meters that exist by now are kept by retention: promote them
        ctx.send_task("default.promote_staged_meter_readings", queue=queues.DEFAULT)
    if batches >= max_batches:
        log.info("retention: %d batches done, more to delete; continuing in a new task", batches)
        ctx.send_task(ctx.name, kwargs={"max_batches": max_batches}, queue=queues.CLEANUP)
    if any(deleted.values()):
        log.info("retention deleted %s", ", ".join(f"{n:,} {t}" for t, n in deleted.items() if n))
    return {"deleted": deleted, "released_blocks": released}


@task("cleanup.release_stale_blocks", queue=queues.CLEANUP, bind=True, max_retries=1, retry_for=(StoreError,))
def release_stale_blocks(ctx) -> dict:
    """Interface blocks whose holder died (lease expired) stop blocking now, not at the next try."""
    released = store_of(ctx.app).release_stale_blocks()
    if released:
        log.warning("released %d interface blocks whose holders stopped renewing them", released)
    return {"released": released}


OUTBOX_GRACE = 300.0  # seconds a committing task has to publish its outbox rows itself


@task("cleanup.publish_outbox", queue=queues.CLEANUP, bind=True, max_retries=3, retry_backoff=10.0,
      retry_for=(StoreError, BrokerError))
def publish_outbox(ctx, max_batches: int = 100) -> dict:
    """Publish outbox rows older than OUTBOX_GRACE: their committing task was dead-lettered (or is
    still retrying: a second publish is allowed, delivery is at least once)."""
    from utilitarian.amr.tasks.commits import send_outbox

    store = store_of(ctx.app)
    sent = 0
    for _ in range(max(1, int(max_batches))):
        entries = store.stranded_outbox(older_than=utc_now() - dt.timedelta(seconds=OUTBOX_GRACE), limit=50)
        if not entries:
            break
        store.delete_outbox(send_outbox(ctx, entries))
        sent += sum(len(e.readings) for e in entries)
    else:
        ctx.send_task(ctx.name, kwargs={"max_batches": max_batches}, queue=queues.CLEANUP)
    if sent:
        log.warning("published %d committed readings whose commit task did not publish them", sent)
    return {"published": sent}
