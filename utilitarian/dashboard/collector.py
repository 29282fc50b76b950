"""The collector: one thread that gathers everything the page shows every `interval` seconds and
keeps the result as one encoded JSON document. Requests only read that document, so any number of
browsers cost the broker and the store one probe per interval, and a slow source delays the next
document, never a request. Each source failing (broker down, store locked) becomes that section's
error; the thread itself never dies of it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Callable

from utilitarian import plugins, queues
from utilitarian.dashboard import hosts
from utilitarian.dashboard.broker_view import BrokerView
from utilitarian.dashboard.view import (QueueHistory, beat_section, iso, leader_from_fleet, next_fires, queue_rows,
                                        section)

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
INTERVAL = 2.0  # seconds between two documents; the page polls at the same pace
# A fleet-control round waits up to 1.5 s for answers and reads the roster: asked at most this
# often (seconds), the hosts panel lags a little behind the queues and rounds.
FLEET_EVERY = 5.0


class Collector:
    def __init__(self, config, *, interval: float = INTERVAL, fleet: Callable[..., dict] = hosts.fleet,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        from utilitarian.broker.connection import settings_from_config

        self.config = config
        self.interval = interval
        self.fleet = fleet
        self.clock = clock
        self.monotonic = monotonic
        self.settings = settings_from_config(config)
        self.broker = BrokerView(self.settings)
        self.history = QueueHistory()
        self.fleet_doc: dict | None = None
        self.fleet_at = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.document = json.dumps({"starting": True, "interval": interval}).encode()
        self.collected = 0
        self.thread: threading.Thread | None = None

    # --- the document ------------------------------------------------------------------------
    def collect(self) -> dict:
        now = dt.datetime.fromtimestamp(self.clock(), UTC)
        mono = self.monotonic()
        if self.fleet_doc is None or mono - self.fleet_at >= max(self.interval, FLEET_EVERY):
            self.fleet_doc, self.fleet_at = section(self.fleet, self.config), mono
        fleet = self.fleet_doc
        names = list(queues.QUEUES) + [queues.DEAD_LETTER]
        for host in fleet.get("hosts", []):  # queues of a site's own, consumed by some pool
            for worker in host["workers"]:
                for pool in worker["pools"]:
                    names += pool["queues"]
        names = list(dict.fromkeys(names))
        queue_section = section(self._queues, names)
        # One attempt per document at a broker that is down, not one per section.
        beat = section(lambda: beat_section(self.broker.beat(now))) if queue_section["ok"] else queue_section
        beat = leader_from_fleet(beat, fleet)
        return {
            "generated_at": iso(now), "interval": self.interval, "broker": self.settings.where,
            "hosts": fleet, "queues": queue_section, "beat": beat,
            "schedule": section(lambda: {"entries": next_fires(self.config.schedule, now)}),
            "panels": [{"name": name, **section(func, self.config, now)} for name, func in self._panels()],
        }

    def _queues(self, names) -> dict:
        return {"rows": queue_rows(self.broker.queues(names), self.history, self.monotonic())}

    def _panels(self):
        try:
            return plugins.dashboard_panels()
        except Exception as exc:  # a broken plugin is shown as a panel of its own, not a dead page
            message = str(exc)

            def broken(_config, _now):
                raise RuntimeError(message)
            return [("plugins", broken)]

    def refresh(self) -> None:
        document = json.dumps(self.collect(), default=str).encode("utf-8")
        with self.lock:
            self.document = document
            self.collected += 1

    def latest(self) -> bytes:
        with self.lock:
            return self.document

    # --- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="dashboard-collector", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            started = self.monotonic()
            try:
                self.refresh()
            except Exception:  # a bug in a source: log it, keep the last document, try again
                log.error("collecting the dashboard document failed; the page keeps the previous one", exc_info=True)
            self.stop.wait(max(0.1, self.interval - (self.monotonic() - started)))
        self.broker.close()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
