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
import logging
import pathlib
import re
import threading

from support.amr_harness import AmrKit
from utilitarian.amr.model import AmrTask, iso_utc
from utilitarian.amr.tasks.faultpoints import KINDS
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
    "execute.results_publish": "outbox flusher about to publish a group of jobs' commit messages (commit queues)",
    "execute.results_store": "outbox flusher about to commit a group of jobs' results itself",
    "execute.results_after_store": "group's readings, events, outcomes and outbox rows committed; "
                                   "publish tasks not sent",
    "execute.results_after_publish": "group's publish tasks confirmed; its outbox rows not deleted",
    "execute.after_results": "results committed (or commit messages confirmed); job not acked",
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
# Where the polls' results go decides which boundaries a round crosses ([amr] commit_in_worker):
# these only in a worker that sends them to the commit queues, those only in one that commits them.
QUEUE_COMMIT_ONLY = frozenset({"execute.results_publish", "commit.readings_after_store",
                               "commit.readings_after_publish", "commit.events_after_store", "commit.runs_after_store"})
DIRECT_COMMIT_ONLY = frozenset({"execute.results_store", "execute.results_after_store",
                                "execute.results_after_publish"})
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
    and a "Poll failed" event each round), 2 read 2 s after it (the dispatch's delayed
    continuation), 4 IEC 62056-21 meters on two RS-485 buses (can_block: interface leases)."""

    BROKEN = "fm-broken"
    OFFSET = 2.0

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
        # The simulators serve every lane from this process: pymodbus' per-frame debug records,
        # formatted by pytest's log capture, would cost more CPU than the frames themselves.
        self._pymodbus = logging.getLogger("pymodbus")
        self._level = self._pymodbus.level
        self._pymodbus.setLevel(logging.WARNING)
        self.modbus.start()
        self.iec.start()
        return self

    def stop(self) -> None:
        self.iec.stop()
        self.modbus.stop()
        self._pymodbus.setLevel(self._level)

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


def render_table(results: list) -> str:
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


def assign_cases(cases: list, lane_direct: list[bool]) -> list[list]:
    """Each (point, kind) to one lane that crosses its boundary, the least loaded first."""
    out: list[list] = [[] for _ in lane_direct]
    for point, kind in cases:
        fits = [i for i, direct in enumerate(lane_direct)
                if not (direct and point in QUEUE_COMMIT_ONLY) and not (not direct and point in DIRECT_COMMIT_ONLY)]
        out[min(fits, key=lambda i: (len(out[i]), i))].append((point, kind))
    return out


__all__ = ["BOUNDARIES", "DIRECT_COMMIT_ONLY", "QUEUE_COMMIT_ONLY", "assign_cases", "KINDS", "FaultFleet", "WebhookSink",
           "render_table", "source_fault_points"]
