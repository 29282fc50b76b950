"""`utilitarian dashboard` in a real headless Chromium while a round runs: 60 simulated Modbus
meters (two of them broken), a worker, a beat and the dashboard as real processes. Asserted on what
the page shows, without reloading it: the round's bar moves, failed meters are listed with their
reasons, the beat leader is the beat process we started, the worker's pool consumes, the round's
queue has a consumer. Set UTILITARIAN_DASHBOARD_SCREENSHOT=docs/dashboard.png to keep a screenshot.

Limits of the evidence: one host (the hosts panel reads this host's control sockets); the rates of
a queue are not asserted (they depend on timing)."""

from __future__ import annotations

import os
import re
import shutil
import socket

from support.amr_harness import wait_for
from support.browser import browser  # noqa: F401  (fixture)
from utilitarian.amr.model import AmrTask
from utilitarian_sim.faults import Faults
from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

SCHEDULE = """
[schedule.page-quarterly]
cron = "* * * * * */20"
task = "amr.dispatch_schedule"
kwargs = { schedule = "quarterly" }
queue = "amr"
slot_kwarg = "slot"
misfire_grace = 5.0
"""
SETTINGS = """
[tasks."amr.execute_meter_task"]
max_retries = 1
retry_backoff = 0.5
retry_jitter = false
"""
BROKEN, DEAD = 7, 13  # an illegal-address answer (no retry helps) and a meter that never answers

BAR = "#panel-rounds .round"
ROUND_STATE = f"""
const bar = document.querySelector("{BAR}");
if (!bar) return null;
const failed = [...bar.querySelectorAll(".failures li[data-meter]")].map(li => li.innerText);
return {{done: Number(bar.dataset.done), failed: Number(bar.dataset.failed), total: Number(bar.dataset.total),
         width: bar.querySelector(".bar .done").getBoundingClientRect().width, failures: failed,
         text: bar.innerText}};
"""


def fleet() -> ModbusFleetSimulator:
    meters = []
    for i in range(60):
        faults = Faults(latency=0.05)
        if i == BROKEN:
            faults = Faults(exception=1.0, exception_code=2)
        elif i == DEAD:
            faults = Faults(timeout=1.0)
        meters.append(SimModbusMeter(device_id=i % 30 + 1, meter_type="eastron_sdm630", gateway=i // 30,
                                     faults=faults, name=f"pg-{i:03d}"))
    return ModbusFleetSimulator(meters)


def test_the_page_shows_a_round_move_its_failures_and_the_beat_leader(amr, browser, tmp_path):  # noqa: F811
    sim = fleet()
    sim.start()
    try:
        # Given: meters, a slow worker (one child, two threads: a round takes many page refreshes)
        amr.configure(SETTINGS, schedules=SCHEDULE)
        rows = sim.meter_entries()
        for row in rows:
            row["url"] += "&timeout=0.5"
        amr.import_meters(rows, tasks=[AmrTask("pg-q", "quarterly", "read_values", "generic_modbus")], group="pg")
        worker = amr.worker("-c", "1", "--threads", "2")
        beat = amr.beat()
        dashboard = amr.process("dashboard", "--port", "0", "--interval", "0.5", name="dashboard")
        url = wait_for(lambda: (re.search(r"dashboard on (http://\S+)", dashboard.output()) or [None, None])[1],
                       timeout=60, interval=0.2, what="the dashboard's URL")

        # When: the page is opened once and left alone while the beat fires a round
        browser.get(url)
        wait_for(lambda: browser.text("#beat-leader-name"), timeout=60, interval=0.3, what="the beat section")

        # Then: the bar moves on the same page (no reload): a partial count, then a larger one
        first = wait_for(lambda: _partial(browser.run(ROUND_STATE)), timeout=90, interval=0.2,
                         what="a round in progress on the page")
        later = wait_for(lambda: _moved(browser.run(ROUND_STATE), first), timeout=60, interval=0.2,
                         what="the round's bar to move")
        assert later["width"] > first["width"]
        _screenshot(browser, tmp_path)

        # the leader named is the beat we started (once it announced itself: every 5 s)
        expected = f"{socket.gethostname()}:{beat.pid}"
        wait_for(lambda: (browser.text("#beat-leader-name") or "").strip() == expected, timeout=30,
                 interval=0.3, what=f"the beat leader {expected} on the page")

        # the worker's pool consumes, and the round's queue has a consumer
        wait_for(lambda: "1/1 consuming" in (browser.text("#hosts") or ""), timeout=30, interval=0.3,
                 what="the worker's pool consuming on the page")
        queue_row = browser.text('#queues tr[data-queue="amr.scheduled.quarterly"]') or ""
        assert queue_row.split("\t")[2].strip() == "1", queue_row

        # failed meters with their reasons, once the round got to them
        done = wait_for(lambda: _failures(browser.run(ROUND_STATE)), timeout=120, interval=0.3,
                        what="both broken meters listed as failed")
        by_meter = {line.split()[0]: line for line in done["failures"]}
        assert set(by_meter) == {f"pg-{BROKEN:03d}", f"pg-{DEAD:03d}"}, done["failures"]
        # each with its task and the reason its last attempt gave
        assert "(pg-q)" in by_meter[f"pg-{BROKEN:03d}"] and "illegal data address" in by_meter[f"pg-{BROKEN:03d}"]
        assert "timeout" in by_meter[f"pg-{DEAD:03d}"], by_meter
        assert done["failed"] == 2
        assert (tmp_path / "dashboard.png").read_bytes().startswith(b"\x89PNG")
        assert worker.alive() and beat.alive() and dashboard.alive()
    finally:
        sim.stop()


def _screenshot(browser, tmp_path) -> None:  # noqa: F811
    """A PNG of the page while the round runs, with a failed meter listed if the round gets to one
    before it finishes (the picture in docs/operations.md)."""
    try:
        wait_for(lambda: _partial(browser.run(ROUND_STATE)) and browser.run(ROUND_STATE)["failures"], timeout=20,
                 interval=0.1, what="a running round with a failure")
    except AssertionError:
        pass  # not asserted: the round may finish first; the picture then shows it finished
    (tmp_path / "dashboard.png").write_bytes(browser.screenshot())
    if os.environ.get("UTILITARIAN_DASHBOARD_SCREENSHOT"):
        shutil.copy(tmp_path / "dashboard.png", os.environ["UTILITARIAN_DASHBOARD_SCREENSHOT"])


def _partial(state):
    return state if state and 0 < state["done"] < state["total"] else None


def _moved(state, first):
    return state if state and state["done"] > first["done"] and state["total"] == first["total"] else None


def _failures(state):
    return state if state and state["failed"] >= 2 and len(state["failures"]) >= 2 else None
