"""Committed readings to the outside: one message per reading on the configured exchange (routing key
`new_meter_value.{meter}.{series}.v1`, series with dashes as the platform spells it) and/or one JSON
POST per batch to a webhook (amr/webhook.py). Delivery is at least once: consumers key on
(meter, series, timestamp).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Sequence

from utilitarian.amr.model import MeterReading, iso_utc, parse_utc

log = logging.getLogger(__name__)


def routing_key(meter: str, series: str) -> str:
    # Dots inside a name would add words to a topic key and break `new_meter_value.*.*.v1` bindings.
    return f"new_meter_value.{meter.replace('.', '-')}.{series.replace('_', '-').replace('.', '-')}.v1"


def reading_message(reading: MeterReading, id_type: str) -> dict:
    return {"meter": reading.meter, "series": reading.series, "timestamp": iso_utc(reading.timestamp),
            "value": reading.value, "id_type": id_type}


def reading_to_wire(r: MeterReading) -> dict:
    """How readings travel between tasks (JSON kwargs)."""
    return {"meter": r.meter, "series": r.series, "timestamp": iso_utc(r.timestamp), "value": r.value,
            "unit": r.unit}


def reading_from_wire(d: dict) -> MeterReading:
    return MeterReading(str(d["meter"]), str(d["series"]), parse_utc(str(d["timestamp"])), str(d["value"]),
                        d.get("unit"))


class ExchangePublisher:
    """Declares the exchange once per process, then publishes through the App's confirmed publisher
    (not mandatory: an exchange nobody has bound a queue to yet is not an error)."""

    def __init__(self, app, exchange: str, exchange_type: str):
        self.app = app
        self.exchange = exchange
        self.exchange_type = exchange_type
        self._declared = False
        self._lock = threading.Lock()

    def declare(self) -> None:
        with self._lock:
            if self._declared:
                return
            from utilitarian.broker.connection import connect_blocking

            conn = connect_blocking(self.app.settings, name="utilitarian publish declare")
            try:
                conn.channel().exchange_declare(self.exchange, exchange_type=self.exchange_type, durable=True)
            finally:
                conn.close()
            self._declared = True

    def publish(self, readings: Sequence[MeterReading], id_type: str) -> int:
        from utilitarian.broker.publisher import Outgoing

        self.declare()
        items = [Outgoing(self.exchange, routing_key(r.meter, r.series),
                          json.dumps(reading_message(r, id_type)).encode(),
                          {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2},
                          mandatory=False)
                 for r in readings]
        self.app.publisher.publish_many(items)
        return len(items)
