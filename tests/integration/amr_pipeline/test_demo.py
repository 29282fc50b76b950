"""`utilitarian demo` as a user runs it: rounds finish and are shown live, Ctrl-C (SIGINT to the demo
only, as a terminal sends it) stops worker, beat and simulators cleanly; no broker -> how to get one."""

from __future__ import annotations

import signal

from support.amr_harness import wait_for
from support.procs import Proc


def test_demo_shows_rounds_and_stops_cleanly_on_ctrl_c(tmp_path, broker_url):
    demo = Proc(["demo", "--broker", broker_url, "--modbus", "40", "--iec", "10", "--interval", "10",
                 "--dir", str(tmp_path / "demo")], log=tmp_path / "demo.log")
    try:
        wait_for(lambda: "finished in" in demo.output() or not demo.alive(), timeout=60, interval=0.5,
                 what="a round to finish in the demo")
        out = demo.output()
        assert "50 simulated meters" in out and "round quarterly" in out
        assert " V\n" in out or " kWh\n" in out  # readings with their units
        demo.signal(signal.SIGINT)
        assert demo.wait(90) == 0, demo.output()[-3000:]
        out = demo.output()
        assert "beat stopped (exit 0)" in out and "worker stopped (exit 0)" in out
        assert out.rstrip().endswith("demo stopped cleanly")
    finally:
        demo.kill_tree()


def test_demo_without_a_broker_says_how_to_get_one(tmp_path):
    demo = Proc(["demo", "--broker", "amqp://guest:guest@127.0.0.1:1/"], log=tmp_path / "demo.log")
    try:
        assert demo.wait(30) == 69
        assert "rabbitmq-server" in demo.output()
    finally:
        demo.kill_tree()
