"""The `utilitarian.metrics_collectors` plugins of a child (AMR: the latest round of each schedule
it serves, from the store), run on a thread of their own every COLLECT_INTERVAL: a collector may
query a database, and the pump thread must never wait on it. What they set travels to the master
in the heartbeats (utilitarian.telemetry)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)
COLLECT_INTERVAL = 15.0


class MetricsCollectors:
    def __init__(self, app, queues, collectors, *, interval: float = COLLECT_INTERVAL):
        self.app = app
        self.queues = tuple(queues)
        self.collectors = list(collectors)  # [(name, callable(app, queues))]
        self.interval = interval
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()

    @classmethod
    def for_child(cls, app, queues) -> "MetricsCollectors":
        from utilitarian.errors import ConfigError
        from utilitarian.plugins import METRICS_COLLECTORS_GROUP, callables

        try:
            found = callables(METRICS_COLLECTORS_GROUP)
        except ConfigError as exc:  # a broken plugin costs its metrics, not the worker
            log.error("metrics collectors unavailable: %s", exc)
            found = []
        return cls(app, queues, found)

    def start(self) -> "MetricsCollectors":
        if self.collectors:
            threading.Thread(target=self._run, name="metrics-collectors", daemon=True).start()
        return self

    def collect_once(self) -> None:
        for name, collect in self.collectors:
            try:
                collect(self.app, self.queues)
            except Exception as exc:  # a store blip: keep the last figures, say so once per change
                text = f"{type(exc).__name__}: {exc}"
                if self._errors.get(name) != text:
                    log.warning("metrics collector %s failed (%s); its gauges keep their last values", name, text)
                self._errors[name] = text
                continue
            self._errors.pop(name, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.collect_once()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
