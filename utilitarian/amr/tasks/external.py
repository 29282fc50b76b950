"""Calls to outside systems: `external.publish_meter_readings` (the platform's exchange, on
`.external.publish`) and `external.post_meter_readings` (a webhook, on `.external`), each retried
with backoff on its own so a slow webhook never holds back the exchange or the commits. A batch
given up on (dead-lettered) leaves a "Publish failed" event per meter, so it is not silence."""

from __future__ import annotations

import logging

from utilitarian import queues
from utilitarian.amr.model import MeterSystemEvent, event_id
from utilitarian.amr.publish import ExchangePublisher, reading_from_wire
from utilitarian.amr.store import StoreError
from utilitarian.amr.tasks.common import settings_of, store_of, utc_now
from utilitarian.amr.tasks.faultpoints import faultpoint
from utilitarian.errors import BrokerError
from utilitarian.tasks import Reject, Retry, task

log = logging.getLogger(__name__)


def _readings(items):
    if not isinstance(items, list):
        raise Reject("readings must be a list")
    try:
        return [reading_from_wire(item) for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise Reject(f"malformed readings: {exc!r}") from None


def _gave_up(ctx, exc: BaseException, args: tuple, kwargs: dict) -> None:
    """The worker dead-letters a publish batch: one "Publish failed" event per meter in it."""
    readings = kwargs.get("readings") if isinstance(kwargs.get("readings"), list) else []
    where = "webhook" if ctx.name == "external.post_meter_readings" else "exchange"
    per_meter: dict[str, int] = {}
    for item in readings:
        if isinstance(item, dict) and item.get("meter"):
            per_meter[str(item["meter"])] = per_meter.get(str(item["meter"]), 0) + 1
    now = utc_now()
    events = [MeterSystemEvent(event_id("publish failed", ctx.id, where, meter), meter, "Publish failed",
                               f"{count} readings not delivered to the {where}: {type(exc).__name__}: {exc}; "
                               "the batch is dead-lettered (`utilitarian dlq replay` sends it again)", now)
              for meter, count in sorted(per_meter.items())]
    if events:
        store_of(ctx.app).save_events(events, now=now)


@task("external.publish_meter_readings", queue=queues.EXTERNAL_PUBLISH, bind=True, max_retries=10,
      retry_backoff=2.0, retry_backoff_max=300.0, retry_for=(BrokerError, StoreError), on_failure=_gave_up)
def publish_meter_readings(ctx, readings: list) -> dict:
    """One message per reading to `[amr.publish] exchange`, routing key
    `new_meter_value.{meter}.{series-with-dashes}.v1`, body `{meter, series, timestamp, value, id_type}`."""
    batch = _readings(readings)
    publish = settings_of(ctx.app).publish
    if not publish.exchange:
        log.info("no [amr.publish] exchange configured; %d readings not published", len(batch))
        return {"published": 0}
    publisher = ctx.app.resource("amr.exchange_publisher",
                                 lambda app: ExchangePublisher(app, publish.exchange, publish.exchange_type))
    faultpoint("publish.exchange_before")
    published = publisher.publish(batch, publish.id_type)
    faultpoint("publish.exchange_after")
    return {"published": published}


@task("external.post_meter_readings", queue=queues.EXTERNAL, bind=True, max_retries=100,
      retry_backoff=5.0, retry_backoff_max=3600.0, on_failure=_gave_up)
def post_meter_readings(ctx, readings: list) -> dict:
    """POST the batch to `[amr.publish] webhook_url`; retried `webhook_retries` times with backoff
    (from `webhook_backoff`, doubling); a refusal (4xx) is dead-lettered at once."""
    batch = _readings(readings)
    publish = settings_of(ctx.app).publish
    if not publish.webhook_url:
        log.info("no [amr.publish] webhook_url configured; %d readings not posted", len(batch))
        return {"posted": 0}
    from utilitarian.amr.webhook import post_webhook  # urllib.request: loaded where a webhook is posted

    faultpoint("publish.webhook_before")
    result = post_webhook(publish.webhook_url, batch, id_type=publish.id_type, timeout=publish.webhook_timeout)
    if result.ok:
        faultpoint("publish.webhook_after")
        return {"posted": len(batch), "status": result.status}
    if not result.retryable:
        raise Reject(f"webhook refused {len(batch)} readings: {result.detail}")
    if ctx.retries >= publish.webhook_retries:
        raise Reject(f"webhook failed {ctx.retries + 1} times, last: {result.detail}")
    delay = min(3600.0, publish.webhook_backoff * 2 ** ctx.retries)
    log.warning("webhook POST of %d readings failed (%s); retry %d in %.0fs", len(batch), result.detail,
                ctx.retries + 1, delay)
    raise Retry(result.detail, countdown=delay)
