"""A real Celery 5 app as our interoperability peer: it declares queues the way Celery does,
publishes with `send_task`, and (as `celery -A support.celery_peer worker -P solo`) runs a task
that writes what it received as JSON to $CELERY_PEER_OUT."""

from __future__ import annotations

import json
import os

from celery import Celery

app = Celery("peer", broker=os.environ.get("CELERY_PEER_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


def _jsonable(value):
    import datetime
    import decimal
    import uuid

    if isinstance(value, (datetime.datetime, datetime.date)):
        return {"type": type(value).__name__, "value": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"type": "Decimal", "value": str(value)}
    if isinstance(value, uuid.UUID):
        return {"type": "UUID", "value": str(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@app.task(name="peer.record", bind=True)
def record(self, *args, **kwargs):
    with open(os.environ["CELERY_PEER_OUT"], "a") as fh:
        fh.write(json.dumps({"id": self.request.id, "args": _jsonable(args), "kwargs": _jsonable(kwargs),
                             "retries": self.request.retries}) + "\n")
