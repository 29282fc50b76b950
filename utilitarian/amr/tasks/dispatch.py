"""`amr.dispatch_schedule` on the amr queue: one firing of a schedule becomes one
`amr.execute_meter_task` per (meter, AMR task) on the schedule's queue, published in pipelined
batches with deterministic ids, and recorded as a round for progress."""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from utilitarian import queues
from utilitarian.amr.model import DispatchRound, Job, iso_utc, job_id, parse_utc, round_id, uuid5_text
from utilitarian.amr.store import StoreError
from utilitarian.amr.tasks.common import chunks, settings_of, store_of, utc_now
from utilitarian.amr.tasks.faultpoints import faultpoint
from utilitarian.errors import BrokerError
from utilitarian.tasks import Reject, task

log = logging.getLogger(__name__)
EXECUTE = "amr.execute_meter_task"
PUBLISH_THREADS = 3  # batches in flight at once while dispatching
DUE_SLACK = 1.0  # seconds: a job due this soon is published now (the worker holds it back the rest)


def plan_jobs(pairs, slot: dt.datetime) -> list[Job]:
    """Jobs of one round: not before slot + the task's run offset."""
    return [Job(job_id(meter, amr_task, slot), meter, amr_task, slot + dt.timedelta(seconds=offset))
            for meter, amr_task, offset in pairs]


@task("amr.dispatch_schedule", queue=queues.AMR, bind=True, max_retries=5, retry_backoff=2.0,
      retry_backoff_max=60.0, retry_for=(StoreError, BrokerError))
def dispatch_schedule(ctx, schedule: str, slot: str | None = None) -> dict:
    """Fan a round out. A repeated dispatch of the same (schedule, slot) publishes only what an
    earlier one did not (it failed midway, or the jobs were not due yet), so a duplicate fire adds
    no jobs. Jobs not due yet are published by a delayed continuation of this task."""
    queue = queues.SCHEDULE_QUEUES.get(schedule)
    if queue is None:
        raise Reject(f"unknown schedule {schedule!r}; known: {', '.join(queues.SCHEDULE_QUEUES)}")
    now = utc_now()
    try:
        slot_time = parse_utc(slot) if slot else now.replace(microsecond=0)
    except ValueError:
        raise Reject(f"slot {slot!r} is not an ISO 8601 time") from None
    started = time.monotonic()
    store = store_of(ctx.app)
    settings = settings_of(ctx.app)
    jobs = plan_jobs(store.jobs_for_schedule(schedule), slot_time)
    rnd = DispatchRound(round_id(schedule, slot_time), schedule, slot_time, len(jobs), now)
    todo = store.record_round(rnd, jobs, now=now)
    if len(todo) == len(jobs):  # a repeated dispatch of the same round is not a new round
        from utilitarian.amr.metrics import DISPATCHED

        DISPATCHED.inc(schedule)
    faultpoint("dispatch.after_record")
    if len(todo) < len(jobs):
        log.info("round %s was dispatched before; publishing the %d of %d jobs it did not publish",
                 rnd.id, len(todo), len(jobs))
    from utilitarian.app import TaskCall

    slot_text = iso_utc(slot_time)
    # Jobs whose run offset lies ahead are not sent through the delay queues one by one (10,000
    # delayed messages cost the broker several times what due ones do): one continuation of this
    # dispatch waits instead and publishes them when they are due.
    horizon = now + dt.timedelta(seconds=DUE_SLACK)
    due = [j for j in todo if j.eta <= horizon]
    later = [j for j in todo if j.eta > horizon]
    batches = list(chunks(due, settings.dispatch_batch_size))

    def publish(batch) -> None:
        ctx.send_tasks([TaskCall(EXECUTE, kwargs={"meter": j.meter, "amr_task": j.amr_task, "slot": slot_text,
                                                  "round_id": rnd.id},
                                 queue=queue, task_id=j.id, eta=j.eta if j.eta > now else None)
                        for j in batch])
        faultpoint("dispatch.after_publish")
        store.mark_published([j.id for j in batch])

    # Batches overlap: one is encoded while the previous ones wait for their confirms. A failed
    # batch stays unpublished in the store, so a repeated dispatch sends exactly what is missing.
    with ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="dispatch") as pool:
        results = [pool.submit(publish, batch) for batch in batches]
        errors = [f.exception() for f in results if f.exception() is not None]
    if errors:
        raise errors[0]
    next_eta = min(j.eta for j in later) if later else None
    if next_eta is not None and not store.continuation_scheduled(rnd.id, next_eta):
        # Published first, recorded after its confirm: a failed publish (or a kill in between)
        # leaves nothing recorded, so the retry or redelivery of this dispatch publishes it again.
        # Recording first would make that retry believe the continuation was sent (issue 11).
        faultpoint("dispatch.before_continuation")
        ctx.send_task(ctx.name, kwargs={"schedule": schedule, "slot": slot_text}, queue=queues.AMR, eta=next_eta,
                      task_id=uuid5_text(f"continue\x00{rnd.id}\x00{iso_utc(next_eta)}"))
        faultpoint("dispatch.after_continuation")
        store.record_continuation(rnd.id, next_eta)
    seconds = time.monotonic() - started
    store.finish_dispatch(rnd.id, seconds)
    log.info("round %s: %d jobs, %d published to %s in %.2fs%s", rnd.id, len(jobs), len(due),
             queues.short_name(queue), seconds,
             f"; {len(later)} wait for their run offset (next at {iso_utc(min(j.eta for j in later))})"
             if later else "")
    return {"round": rnd.id, "jobs": len(jobs), "published": len(due), "waiting": len(later),
            "seconds": round(seconds, 3)}
