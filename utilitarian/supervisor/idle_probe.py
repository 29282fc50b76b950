"""Is work for this child's queues still due later? Asked of the `utilitarian.idle_probes` plugins
(AMR answers: a round's jobs wait for their run offset, published by a delayed continuation), on a
thread of its own every PROBE_INTERVAL: a probe may query a database, and the pump thread must never
wait on it. The heartbeat carries the cached answer as `pending_later`; `--exit-when-idle` does not
fire while any child reports it (empty queues do not mean the work is done).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)
PROBE_INTERVAL = 5.0  # seconds between answers; the master's idle limit is normally minutes


class PendingLaterProbe:
    def __init__(self, app, queues: tuple[str, ...], probes, *, interval: float = PROBE_INTERVAL):
        self.app = app
        self.queues = tuple(queues)
        self.probes = list(probes)  # [(name, callable(app, queues) -> bool)]
        self.interval = interval
        self._answers: dict[str, bool] = {}
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_child(cls, app, queues, *, enabled: bool) -> "PendingLaterProbe":
        """The installed probes when `enabled` (the worker exits when idle), else none."""
        probes = []
        if enabled:
            from utilitarian.errors import ConfigError
            from utilitarian.plugins import idle_probes

            try:
                probes = idle_probes()
            except ConfigError as exc:  # a broken plugin: say so; the worker exits when its queues are idle
                log.error("idle probes unavailable: %s", exc)
        return cls(app, queues, probes)

    @property
    def pending_later(self) -> bool:
        """The last answers (False until a probe answered): cheap, for the pump thread."""
        return any(self._answers.values())

    def start(self) -> "PendingLaterProbe":
        if self.probes:
            self._thread = threading.Thread(target=self._run, name="idle-probe", daemon=True)
            self._thread.start()
        return self

    def probe_once(self) -> bool:
        for name, probe in self.probes:
            try:
                answer = bool(probe(self.app, self.queues))
            except Exception as exc:  # keep the last answer: a database blip must not end a wait
                text = f"{type(exc).__name__}: {exc}"
                if self._errors.get(name) != text:  # once per change, not every few seconds
                    log.warning("idle probe %s failed (%s); keeping its last answer", name, text)
                self._errors[name] = text
                continue
            self._errors.pop(name, None)
            if answer != self._answers.get(name, False):
                log.info("idle probe %s: work for %s is %s", name, ", ".join(self.queues),
                         "still due later" if answer else "no longer due later")
            self._answers[name] = answer
        return self.pending_later

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe_once()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
