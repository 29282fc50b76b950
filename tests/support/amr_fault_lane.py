"""One lane of the crash-and-fail harness (see support/amr_faults.py): an installation with its own
vhost, store, worker (fault points armed through UTILITARIAN_FAULTS), exchange queue and webhook
path, which runs cases one after the other and checks the invariant after each."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import time
from dataclasses import dataclass, field

import pika
import pika.exceptions

from support.amr_faults import FaultFleet, WebhookSink
from support.amr_harness import AmrKit, create_pg_database, drop_pg_database
from utilitarian import queues
from utilitarian.amr.model import MeterDevice, MeterDeviceConfig, MeterEntry, MeterReading, iso_utc
from utilitarian.amr.progress import round_progress
from utilitarian.amr.tasks.faultpoints import ENV
from utilitarian.broker import delay

UTC = dt.timezone.utc

EXCHANGE, BOUND_QUEUE = "platform.readings", "platform-readings-test"
FAST = ("amr.dispatch_schedule", "amr.execute_meter_task", "commits.save_meter_readings",
        "commits.save_meter_system_events", "commits.record_task_run", "default.promote_staged_meter_readings",
        "external.publish_meter_readings", "external.post_meter_readings")


def lane_config(webhook: str, commit_in_worker: bool = True) -> str:
    tasks = "".join(f'[tasks."{name}"]\nretry_backoff = 0.2\nretry_backoff_max = 1.0\nretry_jitter = false\n\n'
                    for name in FAST)
    return (f"[worker]\ncrash_loop_limit = 1000\nrestart_backoff_max = 0.5\n\n{tasks}"
            f"[amr]\ninterface_wait = 0.5\ninterface_defer = 0.3\ncommit_in_worker = {str(commit_in_worker).lower()}\n\n"
            f'[amr.publish]\nexchange = "{EXCHANGE}"\nwebhook_url = "{webhook}"\nwebhook_backoff = 0.2\n')


@dataclass
class CaseResult:
    backend: str
    point: str | None
    kind: str | None
    lane: str
    fired: int = 0
    problems: list[str] = field(default_factory=list)
    visible: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


class Lane:
    def __init__(self, name: str, backend: str, rabbit, fleet: FaultFleet, sink: WebhookSink,
                 tmp: pathlib.Path, *, commit_in_worker: bool = True):
        from utilitarian.broker.connection import settings_from_url

        self.name, self.backend, self.rabbit, self.fleet, self.sink = name, backend, rabbit, fleet, sink
        self.commit_in_worker = commit_in_worker
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.exchange_seen: set = set()
        self._drain_conn = None
        self.last_slot: dt.datetime | None = None
        self.cases = 0
        self.pg_name = None
        self.kit = self.worker = None
        self.vhost = rabbit.add_vhost(prefix="amrfault")
        try:
            self.broker_url = rabbit.url_for(self.vhost)
            if backend == "postgresql":
                db_url, self.pg_name = create_pg_database()
            else:
                db_url = f"sqlite:///{tmp / 'state' / 'amr.sqlite3'}"
            settings = settings_from_url(self.broker_url, confirm_timeout=15.0, connection_timeout=5.0)
            self.kit = AmrKit(tmp, self.broker_url, settings, db_url)
            self.kit.configure(lane_config(sink.url(name), commit_in_worker))
            fleet.install(self.kit)
            self.faults = tmp / "faults"
            self.faults.mkdir()
            self._declare_exchange_queue()
            self.worker = self.kit.worker("-c", "2", "--threads", "6", env={ENV: str(self.faults)})
            self._wait_ready()
        except BaseException:
            self.close()  # nothing of a lane that failed to open is left behind
            raise

    # --- plumbing --------------------------------------------------------------------------------
    def _declare_exchange_queue(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        try:
            ch = conn.channel()
            ch.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
            ch.queue_declare(BOUND_QUEUE, durable=True)
            ch.queue_bind(BOUND_QUEUE, EXCHANGE, routing_key="new_meter_value.#")
        finally:
            conn.close()

    def control(self) -> dict:
        from utilitarian.supervisor.control import discover, query

        [path] = discover(str(self.tmp / "run"))
        return query(path)

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.worker.alive():
                raise RuntimeError(f"lane {self.name}: worker exited\n{self.worker.output()[-3000:]}")
            try:
                doc = self.control()
                if len(doc["children"]) == 2 and all(c["ready"] for c in doc["children"]):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"lane {self.name}: worker not ready within {timeout}s")

    def counters(self) -> tuple[int, int]:
        doc = self.control()
        return int(doc["totals"].get("retried", 0)), int(doc["restarts"])

    def drain_exchange(self) -> set:
        """Every reading published to the exchange so far (one connection per lane, kept)."""
        try:
            if self._drain_conn is None or not self._drain_conn.is_open:
                self._drain_conn = pika.BlockingConnection(pika.URLParameters(self.broker_url))
                self._drain_ch = self._drain_conn.channel()
            while True:
                method, _props, body = self._drain_ch.basic_get(BOUND_QUEUE, auto_ack=True)
                if method is None:
                    break
                r = json.loads(body)
                self.exchange_seen.add((r["meter"], r["series"], r["timestamp"]))
        except pika.exceptions.AMQPError:
            self._drain_conn = None  # looked at again on the next check
        return self.exchange_seen

    def depths(self) -> dict[str, int]:
        from utilitarian.broker.topology import inspect_queues

        names = [*queues.QUEUES, queues.DEAD_LETTER, *(delay.level_queue(n) for n in range(delay.LEVELS))]
        return {q.name: q.messages or 0 for q in inspect_queues(self.kit.settings, names)}

    def quiet(self) -> bool:
        """Nothing waiting in any queue or delay level, nothing in flight in the worker."""
        depths = self.depths()
        busy = {k: v for k, v in depths.items() if v and k != queues.DEAD_LETTER}
        inflight = sum(c["inflight"] for c in self.control()["children"])
        return not busy and inflight == 0

    def wait_quiet(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            try:
                streak = streak + 1 if self.quiet() else 0
            except (OSError, ValueError, KeyError):
                streak = 0
            if streak >= 2:  # two looks a heartbeat apart: no delivery was between them
                return True
            time.sleep(1.05)
        return False

    # --- a case ----------------------------------------------------------------------------------
    def arm(self, point: str | None, kind: str | None) -> None:
        for f in self.faults.iterdir():
            f.unlink()
        if point:
            (self.faults / point).write_text(f"{kind} 1")

    def fired(self, point: str | None) -> int:
        return len(list(self.faults.glob(f"{point}.fired.*"))) if point else 0

    def _slot(self) -> dt.datetime:
        # The next whole second (readings are stamped with whole seconds), waited for: the offset
        # jobs are then due OFFSET seconds after the dispatch, which (due-slack 1 s) always leaves
        # them to its delayed continuation.
        now = dt.datetime.now(UTC)
        slot = now.replace(microsecond=0) + dt.timedelta(seconds=1)
        if self.last_slot is not None and slot <= self.last_slot:
            slot = self.last_slot + dt.timedelta(seconds=1)
        time.sleep(max(0.0, (slot - dt.datetime.now(UTC)).total_seconds()))
        self.last_slot = slot
        return slot

    def stage(self, slot: dt.datetime, case: int) -> set:
        """Readings of three meters the registry does not know yet, then the meters: promotion's work."""
        names = [f"late-{self.name}-{case}-{i}" for i in range(3)]
        store = self.kit.store
        result = store.commit_readings([MeterReading(n, s, slot, str(10 + i), "V")
                                        for i, n in enumerate(names) for s in ("voltage", "current")])
        assert result.staged == 6, result
        config = MeterDeviceConfig("late/UTC", "UTC", ())
        store.import_registry([MeterEntry(MeterDevice(n, "modbus+tcp://127.0.0.1:9?device_id=1", "generic_modbus",
                                                      "late", config, None, "eastron_sdm120"), {}) for n in names])
        self.late = names
        return {(n, s, iso_utc(slot)) for n in names for s in ("voltage", "current")}

    def problems(self, slot: dt.datetime, expected: set, broken_events: int) -> list[str]:
        store = self.kit.store
        out = []
        rounds = [p for p in round_progress(store, limit=5) if p.slot == slot]
        if not rounds:
            return ["round: not recorded"]
        [p] = rounds
        runs = store.list_runs(p.round_id)
        failed = sorted(r.meter for r in runs if r.outcome == "failed")
        if p.jobs != self.fleet.jobs or p.pending or failed != [FaultFleet.BROKEN]:
            out.append(f"round: {p.jobs} jobs, {p.pending} pending, failed {failed}")
        stamp = iso_utc(slot)
        stored = {(r.meter, r.series, iso_utc(r.timestamp))
                  for r in store.iter_readings(since=slot, until=slot + dt.timedelta(microseconds=1))}
        stored = {k for k in stored if k[2] == stamp}
        if stored != expected:
            out.append(f"stored: {len(expected - stored)} missing, {len(stored - expected)} unexpected")
        staged = [s for s in store.list_staged(limit=1000) if s.meter in self.late]
        if staged:
            out.append(f"promote: {len(staged)} readings still staged")
        if store.outbox_size():
            out.append(f"outbox: {store.outbox_size()} rows not published")
        missing_x = expected - self.drain_exchange()
        missing_w = expected - self.sink.seen(self.name)
        if missing_x:
            out.append(f"exchange: {len(missing_x)} of {len(expected)} readings never published")
        if missing_w:
            out.append(f"webhook: {len(missing_w)} of {len(expected)} readings never posted")
        events = [e for e in store.list_events(meter=FaultFleet.BROKEN, limit=10_000) if e.title == "Poll failed"]
        if len(events) <= broken_events:
            out.append("events: no 'Poll failed' event for the broken meter")
        return out

    def run_case(self, point: str | None, kind: str | None, *, deadline: float = 60.0) -> CaseResult:
        started = time.monotonic()
        result = CaseResult(self.backend, point, kind, self.name)
        self.cases += 1
        retried0, restarts0 = self.counters()
        broken_events = len([e for e in self.kit.store.list_events(meter=FaultFleet.BROKEN, limit=10_000)
                             if e.title == "Poll failed"])
        dead0 = self.depths()[queues.DEAD_LETTER]
        self.arm(point, kind)
        slot = self._slot()
        expected = self.fleet.expected(slot) | self.stage(slot, self.cases)
        from utilitarian.app import TaskCall

        self.kit.app.send_tasks([
            TaskCall("amr.dispatch_schedule", kwargs={"schedule": "quarterly", "slot": iso_utc(slot)}),
            TaskCall("default.promote_staged_meter_readings", kwargs={"meters": self.late})])
        # Then, within the deadline, the invariant holds
        end = time.monotonic() + deadline
        problems = ["not checked"]
        while time.monotonic() < end:
            try:
                problems = self.problems(slot, expected, broken_events)
            except Exception as exc:  # a store or broker blip while looking: look again
                problems = [f"check failed: {type(exc).__name__}: {exc}"]
            if not problems:
                break
            time.sleep(0.5)
        result.problems = problems
        if not self.wait_quiet():
            result.problems.append(f"not quiet: {self._busy()}")
        result.fired = self.fired(point)
        if point and not result.fired:
            result.problems.append("fault never fired: the boundary was not reached")
        dead = self.depths()[queues.DEAD_LETTER] - dead0
        if dead:
            result.problems.append(f"dead-lettered: {dead} messages")
        if not self.worker.alive():
            result.problems.append("worker exited")
            return result
        retried, restarts = self.counters()
        result.visible = f"retried +{retried - retried0}, restarts +{restarts - restarts0}"
        if kind == "kill" and restarts == restarts0:
            result.problems.append("the killed child was not counted as a restart")
        if kind in ("publish", "store") and retried == retried0:
            result.problems.append("the injected error caused no counted retry")
        result.seconds = round(time.monotonic() - started, 1)
        self.arm(None, None)
        return result

    def _busy(self) -> str:
        try:
            return ", ".join(f"{k.removeprefix('utilitarian.')}={v}" for k, v in self.depths().items() if v)
        except Exception as exc:
            return str(exc)

    def negative_control(self) -> list[str]:
        """The checker can fail: the last case's expectation plus one reading nobody ever committed
        must be reported as missing from the store, the exchange and the webhook. (Nothing is
        changed in the lane: a late duplicate could not make this pass or fail by chance.)"""
        slot = self.last_slot
        stamp = iso_utc(slot)
        expected = self.fleet.expected(slot) | {(n, s, stamp) for n in self.late for s in ("voltage", "current")}
        return self.problems(slot, expected | {("fm-0", "never_read", stamp)}, -1)

    def close(self) -> None:
        if self._drain_conn is not None and self._drain_conn.is_open:
            self._drain_conn.close()
        if self.worker is not None:
            self.worker.signal(15)
            try:
                self.worker.wait(30)
            except Exception:  # kit.close() below kills what is left
                pass
        if self.kit is not None:
            self.kit.close()
        self.rabbit.delete_vhost(self.vhost)
        if self.pg_name:
            drop_pg_database(self.pg_name)
