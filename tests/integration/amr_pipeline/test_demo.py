"""`utilitarian demo` as a user runs it: rounds finish and are shown live, Ctrl-C (SIGINT to the demo
only, as a terminal sends it) stops worker, beat and simulators cleanly; no broker -> how to get one."""

from __future__ import annotations

import json
import re
import signal
import urllib.request

from support.amr_harness import wait_for
from support.procs import Proc


def test_demo_shows_rounds_and_stops_cleanly_on_ctrl_c(tmp_path, broker_url):
    demo = Proc(["demo", "--broker", broker_url, "--modbus", "40", "--iec", "10", "--dlms", "2", "--mbus", "3",
                 "--interval", "10", "--dir", str(tmp_path / "demo"), "--dashboard-port", "0"], log=tmp_path / "demo.log")
    try:
        wait_for(lambda: "finished in" in demo.output() or not demo.alive(), timeout=60, interval=0.5,
                 what="a round to finish in the demo")
        out = demo.output()
        assert "55 simulated meters" in out and "round quarterly" in out
        assert " V\n" in out or " kWh\n" in out  # readings with their units
        # every protocol's meters report, the secured DLMS meter (HLS-GMAC) among them
        wait_for(lambda: {"modbus", "iec", "dlms", "mbus"} <= reporting(tmp_path / "demo"), timeout=60,
                 interval=0.5, what="readings from every protocol")
        assert "dlms-0002" in {m for m in meters_with_readings(tmp_path / "demo")}
        # the status page beside the terminal view shows the demo's rounds
        url = re.search(r"status page: (http://127\.0\.0\.1:\d+/)", out).group(1)
        seen = []

        def quarterly_on_the_page():
            # The page serves its collector's latest document, refreshed every few seconds: the
            # quarterly round the terminal printed shows on a refresh, not necessarily the one before.
            with urllib.request.urlopen(url + "api/state", timeout=30) as resp:
                seen.append({p["name"]: p for p in json.load(resp)["panels"]}["rounds"])
            return seen[-1]["ok"] and any(bar["label"].startswith("quarterly") for bar in seen[-1]["bars"])

        try:
            wait_for(quarterly_on_the_page, timeout=30, interval=0.5, what="the quarterly round on the page")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {seen[-1]}") from None
        demo.signal(signal.SIGINT)
        assert demo.wait(90) == 0, demo.output()[-3000:]
        out = demo.output()
        assert "beat stopped (exit 0)" in out and "worker stopped (exit 0)" in out
        assert out.rstrip().endswith("demo stopped cleanly")
    finally:
        demo.kill_tree()


def meters_with_readings(workdir) -> set[str]:
    import sqlite3

    path = workdir / "demo.sqlite3"
    if not path.exists():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return {row[0] for row in conn.execute(
                "SELECT DISTINCT d.name FROM meter_reading r JOIN meter_device d ON d.id = r.meter_id")}
        except sqlite3.Error:
            return set()


def reporting(workdir) -> set[str]:
    return {name.split("-")[0] for name in meters_with_readings(workdir)}


def test_demo_without_a_broker_says_how_to_get_one(tmp_path):
    demo = Proc(["demo", "--broker", "amqp://guest:guest@127.0.0.1:1/"], log=tmp_path / "demo.log")
    try:
        assert demo.wait(30) == 69
        assert "rabbitmq-server" in demo.output()
    finally:
        demo.kill_tree()
