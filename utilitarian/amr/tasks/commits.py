"""The commit queues: readings (`.commits.meter_readings`), system events
(`.commits.meter_system_events`), job outcomes (`.commits`), and the promotion of staged readings
when their meter is added (`.default`). Every commit is idempotent: a redelivery changes nothing.
"""

from __future__ import annotations

import logging
from typing import Sequence

from utilitarian import queues
from utilitarian.amr.model import AmrTaskRun, MeterSystemEvent, parse_utc
from utilitarian.amr.publish import reading_from_wire
from utilitarian.amr.store import StoreError
from utilitarian.amr.tasks.common import chunks, settings_of, store_of, utc_now
from utilitarian.amr.tasks.faultpoints import faultpoint
from utilitarian.errors import BrokerError
from utilitarian.tasks import Reject, task

log = logging.getLogger(__name__)

PUBLISH_EXCHANGE = "external.publish_meter_readings"
POST_WEBHOOK = "external.post_meter_readings"
PUBLISH_BATCH = 500  # readings per publish task: keeps messages small and retries cheap


def _decode(items, what: str, parse):
    if not isinstance(items, list):
        raise Reject(f"{what} must be a list")
    try:
        return [parse(item) for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise Reject(f"malformed {what}: {exc!r}") from None


def publishing(app) -> bool:
    """Whether `[amr.publish]` sends committed readings anywhere."""
    publish = settings_of(app).publish
    return bool(publish.exchange or publish.webhook_url)


def publish_calls(app, readings: Sequence[dict]) -> list:
    """Follow-up tasks that take committed readings (wire form) outside, per `[amr.publish]`."""
    from utilitarian.app import TaskCall

    publish = settings_of(app).publish
    calls = []
    for batch in chunks(list(readings), PUBLISH_BATCH):
        if publish.exchange:
            calls.append(TaskCall(PUBLISH_EXCHANGE, kwargs={"readings": list(batch)}, queue=queues.EXTERNAL_PUBLISH))
        if publish.webhook_url:
            calls.append(TaskCall(POST_WEBHOOK, kwargs={"readings": list(batch)}, queue=queues.EXTERNAL))
    return calls


def send_outbox(ctx, entries) -> list[int]:
    """Send the publish tasks of these outbox rows; returns the row ids to delete once the broker
    confirmed them (it has when this returns). A failure leaves the rows: at least once."""
    calls = [call for entry in entries for call in publish_calls(ctx.app, entry.readings)]
    if calls:
        ctx.send_tasks(calls)
    return [entry.id for entry in entries]


@task("commits.save_meter_readings", queue=queues.COMMITS_READINGS, bind=True, max_retries=10,
      retry_backoff=1.0, retry_backoff_max=60.0, retry_for=(StoreError, BrokerError))
def save_meter_readings(ctx, readings: list, job_id: str | None = None) -> dict:
    """Store a batch of `{meter, series, timestamp, value, unit}`. Unknown meter: staged. Series
    the meter's config does not allow: rejected with a system event. What was stored goes to the
    publish outbox in the same transaction and is published from there, so a failed publish or a
    kill after the commit is made good by the retry or the redelivery of this message."""
    batch = _decode(readings, "readings", reading_from_wire)
    store = store_of(ctx.app)
    owner = ctx.id if publishing(ctx.app) else None
    result = store.commit_readings(batch, now=utc_now(), publish_as=owner)
    from utilitarian.amr.metrics import count_committed

    count_committed(result)
    faultpoint("commit.readings_after_store")
    published = 0
    if owner:
        # this attempt's rows, and those of an earlier attempt whose publish failed or was cut short
        entries = store.outbox_of(owner)
        sent = send_outbox(ctx, entries)
        faultpoint("commit.readings_after_publish")
        store.delete_outbox(sent)
        published = sum(len(e.readings) for e in entries)
    return {"inserted": result.inserted, "changed": result.changed, "unchanged": result.unchanged,
            "staged": result.staged, "rejected": result.rejected, "published": published}


def event_from_wire(d: dict) -> MeterSystemEvent:
    ts = d.get("timestamp")
    return MeterSystemEvent(str(d["id"]), str(d["meter"]), str(d["title"]), str(d.get("content") or ""),
                            parse_utc(ts) if ts else None)


@task("commits.save_meter_system_events", queue=queues.COMMITS_EVENTS, bind=True, max_retries=10,
      retry_backoff=1.0, retry_backoff_max=60.0, retry_for=(StoreError, BrokerError))
def save_meter_system_events(ctx, events: list) -> dict:
    """Store `{id, meter, title, content, timestamp}` events; an id seen before is skipped."""
    batch = _decode(events, "events", event_from_wire)
    saved = store_of(ctx.app).save_events(batch, now=utc_now())
    faultpoint("commit.events_after_store")
    return {"saved": saved}


def run_from_wire(d: dict) -> AmrTaskRun:
    if d["outcome"] not in ("done", "failed"):
        raise ValueError(f"outcome {d['outcome']!r}")
    finished = d.get("finished_at")
    return AmrTaskRun(str(d["job_id"]), str(d["meter"]), d.get("amr_task"), d["outcome"], d.get("round_id"),
                      d.get("error"), float(d["duration"]) if d.get("duration") is not None else None,
                      int(d.get("attempts") or 1), parse_utc(finished) if finished else None)


@task("commits.record_task_run", queue=queues.COMMITS, bind=True, max_retries=10, retry_backoff=1.0,
      retry_backoff_max=60.0, retry_for=(StoreError, BrokerError))
def record_task_run(ctx, run: dict | None = None, runs: list | None = None) -> dict:
    """Store the final outcome of one job (`run`) or several (`runs`); progress counts these."""
    items = _decode(([run] if run else []) + list(runs or []), "runs", run_from_wire)
    store_of(ctx.app).record_runs(items, now=utc_now())
    faultpoint("commit.runs_after_store")
    return {"recorded": len(items)}


@task("default.promote_staged_meter_readings", queue=queues.DEFAULT, bind=True, max_retries=5,
      retry_backoff=2.0, retry_for=(StoreError, BrokerError))
def promote_staged_meter_readings(ctx, meters: list | None = None, max_batches: int = 20) -> dict:
    """Move readings staged for meters that now exist into the store (sent when meters are added).
    Bounded per run: when more remain, the task sends itself again instead of holding a thread.
    Promoted readings are published through the outbox (the staged rows are gone once promoted)."""
    store = store_of(ctx.app)
    batch_size = settings_of(ctx.app).cleanup_batch_size
    owner = ctx.id if publishing(ctx.app) else None
    if owner:  # what an earlier attempt of this task promoted but did not get published
        store.delete_outbox(send_outbox(ctx, store.outbox_of(owner)))
    moved = 0
    for _ in range(max(1, int(max_batches))):
        result = store.promote_staged(meters, batch_size=batch_size, now=utc_now(), publish_as=owner)
        count = result.inserted + result.changed + result.unchanged + result.rejected
        moved += count
        faultpoint("promote.after_store")
        if owner:
            sent = send_outbox(ctx, store.outbox_of(owner))
            faultpoint("promote.after_publish")
            store.delete_outbox(sent)
        if count < batch_size:
            break
    else:
        ctx.send_task(ctx.name, kwargs={"meters": meters, "max_batches": max_batches}, queue=queues.DEFAULT)
    if moved:
        log.info("promoted %d staged readings", moved)
    return {"promoted": moved}
