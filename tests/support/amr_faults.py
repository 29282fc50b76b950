"""The crash-and-fail harness of the AMR pipeline (tests/integration/amr_faults).

A lane is one installation: its own vhost, store (SQLite file or PostgreSQL database), worker (two
children, all queues) started with UTILITARIAN_FAULTS pointing at the lane's fault directory, an
exchange with a bound queue, and a path on the shared webhook sink. The simulators (Modbus and IEC
62056-21 meters) are shared by all lanes. A case arms one fault point with one fault kind, runs one
round of the fleet plus a promotion of staged readings, waits until the invariant holds (or a
deadline), waits for the lane to be quiet, and reports:

  fired      the armed fault struck (a case whose fault never fired proves nothing: it fails)
  round      the round finished: every job done, only the broken meter failed, none pending
  stored     every reading expected of the round and of the promotion is in the store, nothing else
  published  every one of them reached the exchange's queue and the webhook (at least once)
  visible    the fault left a trace: a retry counted by the worker, or a child restart; and the
             broken meter's "Poll failed" event; nothing dead-lettered
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import pathlib
import re
import threading
import time
from dataclasses import dataclass, field

import pika
import pika.exceptions

from support.amr_harness import AmrKit, create_pg_database, drop_pg_database
from utilitarian import queues
from utilitarian.amr.model import AmrTask, MeterDevice, MeterDeviceConfig, MeterEntry, MeterReading, iso_utc
from utilitarian.amr.progress import round_progress
from utilitarian.amr.tasks.faultpoints import ENV, KINDS
from utilitarian.broker import delay
from utilitarian_sim.faults import Faults
from utilitarian_sim.iec_meter import SimIecMeter
from utilitarian_sim.iec_server import IecSimulator
from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

UTC = dt.timezone.utc
REPO = pathlib.Path(__file__).resolve().parents[2]

# Every step boundary of dispatch -> execute -> commit -> promote -> publish, as named in the code
# (`faultpoint(...)`): what is done at that point, and what is not yet.
BOUNDARIES: dict[str, str] = {
    "dispatch.after_record": "round and pending jobs recorded; nothing published",
    "dispatch.after_publish": "a batch of jobs confirmed by the broker; not marked published",
    "dispatch.before_continuation": "due jobs published; the delayed continuation not yet",
    "dispatch.after_continuation": "continuation confirmed; not yet recorded",
    "execute.after_poll": "meter read; results not handed to the commit outbox",
    "execute.results_publish": "outbox flusher about to publish a group of jobs' commit messages",
    "execute.after_results": "commit messages confirmed; job not acked",
    "commit.readings_after_store": "readings and their outbox rows committed; publish tasks not sent",
    "commit.readings_after_publish": "publish tasks confirmed; outbox rows not deleted",
    "commit.events_after_store": "system events committed; not acked",
    "commit.runs_after_store": "job outcomes committed; not acked",
    "promote.after_store": "staged readings promoted with their outbox rows; publish tasks not sent",
    "promote.after_publish": "publish tasks confirmed; outbox rows not deleted",
    "publish.exchange_before": "about to publish readings to the exchange",
    "publish.exchange_after": "exchange publish confirmed; not acked",
    "publish.webhook_before": "about to POST readings to the webhook",
    "publish.webhook_after": "webhook answered 2xx; not acked",
}
FAULT_CALL = re.compile(r"""faultpoint\(\s*["']([^"']+)["']\s*\)""")


def source_fault_points() -> dict[str, list[str]]:
    """Fault point name -> files naming it, from the runtime's source."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "utilitarian").rglob("*.py")):
        for name in FAULT_CALL.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


# --- the shared fleet and webhook ------------------------------------------------------------------
class FaultFleet:
    """6 Modbus meters read at the slot (one answers every request with an exception: a failed job
    and a "Poll failed" event each round), 2 read 3 s after it (the dispatch's delayed
    continuation), 4 IEC 62056-21 meters on two RS-485 buses (can_block: interface leases)."""

    BROKEN = "fm-broken"
    OFFSET = 3.0  # the continuation must be needed even when the dispatch starts ~1 s after the slot

    def __init__(self):
        types = ("eastron_sdm120", "eastron_sdm630")
        modbus = [SimModbusMeter(device_id=i + 1, meter_type=types[i % 2], name=f"fm-{i}") for i in range(5)]
        modbus.append(SimModbusMeter(device_id=6, meter_type="eastron_sdm120", name=self.BROKEN,
                                     faults=Faults(exception=1.0, exception_code=2)))
        modbus += [SimModbusMeter(device_id=7 + i, meter_type="eastron_sdm120", name=f"fm-later-{i}")
                   for i in range(2)]
        self.modbus = ModbusFleetSimulator(modbus)
        self.iec = IecSimulator([SimIecMeter(address=str(30000001 + i), gateway=i // 2, name=f"fi-{i}")
                                 for i in range(4)])

    def start(self) -> "FaultFleet":
        self.modbus.start()
        self.iec.start()
        return self

    def stop(self) -> None:
        self.iec.stop()
        self.modbus.stop()

    def rows(self) -> list[dict]:
        rows = self.modbus.meter_entries() + self.iec.meter_entries()
        for row in rows:
            if row["execution_type"] == "generic_modbus":
                row["url"] += "&timeout=0.5"
        return rows

    def install(self, kit: AmrKit) -> None:
        rows = self.rows()
        now_modbus = [r for r in rows if r["execution_type"] == "generic_modbus" and "later" not in r["name"]]
        later = [r for r in rows if "later" in r["name"]]
        iec = [r for r in rows if r["execution_type"] != "generic_modbus"]
        kit.import_meters(now_modbus, tasks=[AmrTask("mb-q", "quarterly", "read_values", "generic_modbus")],
                          group="modbus")
        kit.import_meters(later, tasks=[AmrTask("mb-later", "quarterly", "read_values", "generic_modbus",
                                                run_offset_seconds=self.OFFSET)], group="later")
        kit.import_meters(iec, tasks=[AmrTask("iec-q", "quarterly", "readout", "generic_iec6205621")], group="iec")
        self.series = {r["name"]: list(r["series"]) for r in rows}

    @property
    def jobs(self) -> int:
        return len(self.series)

    def expected(self, slot: dt.datetime) -> set[tuple[str, str, str]]:
        stamp = iso_utc(slot)
        return {(m, s, stamp) for m, series in self.series.items() if m != self.BROKEN for s in series}


class WebhookSink:
    """One local HTTP server for every lane: each lane POSTs to /hook/<lane>; 200 to all."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received: dict[str, set] = {}
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                lane = self.path.split("/")[-1]
                with sink.lock:
                    got = sink.received.setdefault(lane, set())
                    got.update((r["meter"], r["series"], r["timestamp"]) for r in body["readings"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-sink")

    def start(self) -> "WebhookSink":
        self.thread.start()
        return self

    def url(self, lane: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/{lane}"

    def seen(self, lane: str) -> set:
        with self.lock:
            return set(self.received.get(lane, ()))

    def forget(self, lane: str, keys) -> None:
        with self.lock:
            self.received.get(lane, set()).difference_update(keys)

    def stop(self) -> None:
        self.server.shutdown()


# --- one lane ---------------------------------------------------------------------------------------
EXCHANGE, BOUND_QUEUE = "platform.readings", "platform-readings-test"
FAST = ("amr.dispatch_schedule", "amr.execute_meter_task", "commits.save_meter_readings",
        "commits.save_meter_system_events", "commits.record_task_run", "default.promote_staged_meter_readings",
        "external.publish_meter_readings", "external.post_meter_readings")


def lane_config(webhook: str) -> str:
    tasks = "".join(f'[tasks."{name}"]\nretry_backoff = 0.2\nretry_backoff_max = 1.0\nretry_jitter = false\n\n'
                    for name in FAST)
    return (f"[worker]\ncrash_loop_limit = 1000\nrestart_backoff_max = 0.5\n\n{tasks}"
            "[amr]\ninterface_wait = 0.5\ninterface_defer = 0.3\n\n"
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
                 tmp: pathlib.Path):
        from utilitarian.broker.connection import settings_from_url

        self.name, self.backend, self.rabbit, self.fleet, self.sink = name, backend, rabbit, fleet, sink
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.vhost = rabbit.add_vhost(prefix="amrfault")
        self.broker_url = rabbit.url_for(self.vhost)
        self.pg_name = None
        if backend == "postgresql":
            db_url, self.pg_name = create_pg_database()
        else:
            db_url = f"sqlite:///{tmp / 'state' / 'amr.sqlite3'}"
        settings = settings_from_url(self.broker_url, confirm_timeout=15.0, connection_timeout=5.0)
        self.kit = AmrKit(tmp, self.broker_url, settings, db_url)
        self.kit.configure(lane_config(sink.url(name)))
        fleet.install(self.kit)
        self.faults = tmp / "faults"
        self.faults.mkdir()
        self._declare_exchange_queue()
        self.exchange_seen: set = set()
        self._drain_conn = None
        self.last_slot: dt.datetime | None = None
        self.cases = 0
        self.worker = self.kit.worker("-c", "2", "--threads", "6", env={ENV: str(self.faults)})
        self._wait_ready()

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
            time.sleep(1.1)
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
        slot = dt.datetime.now(UTC).replace(microsecond=0)
        while self.last_slot is not None and slot <= self.last_slot:
            time.sleep(0.05)
            slot = dt.datetime.now(UTC).replace(microsecond=0)
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

    def run_case(self, point: str | None, kind: str | None, *, deadline: float = 90.0) -> CaseResult:
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
            time.sleep(0.3)
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
        """The checker can fail: a reading of the last case removed from the store, and one taken
        off the webhook's record, must both be reported."""
        slot = self.last_slot
        expected = self.fleet.expected(slot) | {(n, s, iso_utc(slot)) for n in self.late for s in ("voltage", "current")}
        victim = sorted(expected)[0]
        with self.kit.store.backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM meter_reading WHERE meter_id = (SELECT id FROM meter_device WHERE name = ?) "
                       "AND series = ?", (victim[0], victim[1]))
        self.sink.forget(self.name, [sorted(expected)[-1]])
        return self.problems(slot, expected, -1)

    def close(self) -> None:
        if self._drain_conn is not None and self._drain_conn.is_open:
            self._drain_conn.close()
        self.worker.signal(15)
        try:
            self.worker.wait(30)
        except Exception:
            pass
        self.kit.close()
        self.rabbit.delete_vhost(self.vhost)
        if self.pg_name:
            drop_pg_database(self.pg_name)


def render_table(results: list[CaseResult]) -> str:
    """Markdown: boundary x fault, one column per backend, each cell the invariant's result."""
    backends = sorted({r.backend for r in results})
    by = {(r.point, r.kind, r.backend): r for r in results}
    lines = ["| boundary | fault | " + " | ".join(backends) + " |",
             "|---|---|" + "---|" * len(backends)]
    points = [None] + list(BOUNDARIES)
    for point in points:
        for kind in ([None] if point is None else KINDS):
            cells = []
            for backend in backends:
                r = by.get((point, kind, backend))
                if r is None:
                    cells.append("not run")
                elif r.ok:
                    cells.append(f"holds ({r.visible}; {r.seconds:.0f}s)")
                else:
                    cells.append("FAILS: " + "; ".join(r.problems))
            lines.append(f"| {point or '(no fault)'} | {kind or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["BOUNDARIES", "KINDS", "CaseResult", "FaultFleet", "Lane", "WebhookSink", "render_table",
           "source_fault_points"]
