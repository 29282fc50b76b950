"""Metrics of real processes: two worker profiles on one host get ports of their own (no
EADDRINUSE restart loop); a scrape during a broker outage answers and shows the outage; and a
live worker, beat and AMR round expose every metric name the shipped alert rules and Grafana
dashboard use (deploy/monitoring), so neither can silently refer to a name we do not export.

Limits: the AMR round is a small M-Bus fleet (one meter failing every poll) on SQLite; metric
values are checked only where a rule depends on their meaning (consuming, connected, failures)."""

from __future__ import annotations

import pathlib
import random
import re
import signal
import socket
import urllib.request

import pytest

from support.amr_harness import AmrKit
from support.procs import Proc, wait_for, write_config
from support.rabbit import running_private_node
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology

MONITORING = pathlib.Path(__file__).resolve().parents[3] / "deploy" / "monitoring"
NAME = re.compile(r"\butilitarian_[a-z0-9_]+\b")


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def samples(text: str) -> dict[str, list[str]]:
    """Sample name -> its lines (families without a sample do not count as exposed)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            out.setdefault(re.split(r"[{ ]", line, 1)[0], []).append(line)
    return out


def value(text: str, name: str, **labels) -> float | None:
    for line in samples(text).get(name, []):
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def free_block(n: int) -> int:
    """A base port with n free ports after it, below the kernel's ephemeral range (32768-60999):
    a scrape of a port in that range before the worker listens can connect the client to itself
    (TCP simultaneous open on the same source port) and read its own request back as the answer."""
    for _ in range(200):
        base = random.randrange(23000, 29990)
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no block of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def scraped(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def test_two_profiles_on_one_host_serve_metrics_on_ports_of_their_own(tmp_path, broker_url, broker_settings):
    declare_topology(broker_settings)
    base = free_block(3)
    config = write_config(tmp_path / "utilitarian.toml", broker_url, f"""
[worker]
metrics_port = {base}

[[workers.alpha.pools]]
queues = ["default"]
processes = 1
threads = 2

[[workers.beta.pools]]
queues = ["commits"]
processes = 1
threads = 2
""")
    procs = [Proc(["worker", "--config", str(config), "--profile", p], log=tmp_path / f"{p}.log") for p in ("alpha", "beta")]
    try:
        # alpha is the first profile in the file: base + 1; beta the second: base + 2
        for port, name in ((base + 1, "alpha@"), (base + 2, "beta@")):
            text = wait_for(lambda: (t := scraped(port)) and value(t, "utilitarian_child_consuming") == 1 and t,
                            timeout=60, what=f"{name} consuming on port {port}")
            assert f'worker="{name}' in text
        assert all(p.alive() for p in procs)
        assert not any("Address already in use" in p.output() or "EADDRINUSE" in p.output() for p in procs)
        assert scraped(base) is None  # no worker without a profile here
    finally:
        for p in procs:
            p.kill_tree()


@pytest.fixture
def node():
    yield from running_private_node()


def test_a_scrape_during_a_broker_outage_answers_and_shows_it(node, tmp_path):
    url = node.url_for("/")
    declare_topology(settings_from_url(url))
    config = write_config(tmp_path / "utilitarian.toml", url)
    port = free_block(1)
    bport = free_block(1)
    worker = Proc(["worker", "--config", str(config), "-Q", "default", "-c", "1", "--metrics-port", str(port)],
                  log=tmp_path / "worker.log")
    beat = Proc(["beat", "--config", str(config), "--metrics-port", str(bport)], log=tmp_path / "beat.log")
    try:
        def state():
            t = scraped(port)
            return t and (value(t, "utilitarian_broker_connected"), value(t, "utilitarian_child_consuming"))

        def beat_state():
            t = scraped(bport)
            return t and (value(t, "utilitarian_beat_connected"), value(t, "utilitarian_beat_leader"))

        wait_for(lambda: state() == (1.0, 1.0), timeout=60, interval=0.5, what="connected and consuming")
        wait_for(lambda: beat_state() == (1.0, 1.0), timeout=60, interval=0.5, what="the beat leading")
        # When the broker stops
        node.stop_app()
        # Then both pages still answer, showing no connection and no consuming child, no leader
        wait_for(lambda: state() == (0.0, 0.0), timeout=60, interval=0.5, what="the outage in the metrics")
        wait_for(lambda: beat_state() == (0.0, 0.0), timeout=60, interval=0.5, what="the outage in beat metrics")
        assert value(scrape(bport), "utilitarian_beat_lock_losses_total") == 1
        text = scrape(port)
        assert value(text, "utilitarian_pool_consuming_children") == 0
        assert "utilitarian_queue_messages" not in samples(text)  # stale depths are not shown
        node.start_app()
        wait_for(lambda: state() == (1.0, 1.0), timeout=90, interval=0.5, what="consuming again")
        # the counter travels with the child's next heartbeat (every second), after "consuming"
        wait_for(lambda: (value(scrape(port), "utilitarian_reconnects_total") or 0) >= 1, timeout=10,
                 interval=0.2, what="the reconnect counted")
        wait_for(lambda: beat_state() == (1.0, 1.0), timeout=90, interval=0.5, what="the beat leading again")
        assert worker.alive() and beat.alive()
    finally:
        worker.kill_tree()
        beat.kill_tree()


def names_used() -> set[str]:
    used = set(NAME.findall((MONITORING / "utilitarian-alerts.yml").read_text()))
    return used | set(NAME.findall((MONITORING / "grafana-dashboard.json").read_text()))


def test_every_metric_the_rules_and_dashboard_use_is_exposed_by_a_live_worker_beat_and_round(
        tmp_path, broker_url, broker_settings):
    from utilitarian.amr.model import AmrTask
    from utilitarian_sim.faults import Faults
    from utilitarian_sim.mbus_sim import MbusSimulator, SimMbusMeter

    kit = AmrKit(tmp_path, broker_url, broker_settings)
    sim = MbusSimulator([SimMbusMeter(1, "10000001", name="mbus-ok"),
                         SimMbusMeter(2, "10000002", faults=Faults(collision=1.0), name="mbus-noisy")])
    sim.start()
    wport, bport = free_block(1), free_block(1)
    try:
        kit.configure('[tasks."amr.execute_meter_task"]\nmax_retries = 1\nretry_backoff = 0.3\nretry_jitter = false\n',
                      schedules='[schedule.tick]\ncron = "* * * * * *"\ntask = "utilitarian.ping"\n'
                                'coalesce = false\n')
        rows = sim.meter_entries()
        for row in rows:
            row["url"] += "&timeout=0.5&retries=1"
        kit.import_meters(rows, tasks=[AmrTask("mbus-read", "daily", "read_values", "generic_mbus")], group="mbus")
        worker = kit.worker("-c", "1", "--threads", "4", "--metrics-port", str(wport))
        beat = kit.process("beat", "--metrics-port", str(bport), name="beat")
        wait_for(lambda: (t := scraped(wport)) and value(t, "utilitarian_child_consuming") == 1, timeout=60,
                 what="worker consuming")
        kit.app.send_task("amr.dispatch_schedule", kwargs={"schedule": "daily", "slot": "2026-11-24T00:00:00Z"})
        wait_for(lambda: (t := scraped(wport)) and value(t, "utilitarian_amr_round_jobs", state="pending") == 0
                 and value(t, "utilitarian_amr_round_jobs", state="total") == 2, timeout=120, interval=1.0,
                 what="the round finished in the round gauges")
        wait_for(lambda: (t := scraped(bport)) and value(t, "utilitarian_beat_leader") == 1
                 and "utilitarian_beat_fire_lateness_seconds_bucket" in samples(t), timeout=60, what="beat fired")
        wait_for(lambda: "utilitarian_queue_messages" in samples(scraped(wport) or ""), timeout=30,
                 what="queue depths from the control agent")
        exposed = set(samples(scrape(wport))) | set(samples(scrape(bport)))
        assert len(names_used()) > 30  # the check below has something to check
        missing = sorted(names_used() - exposed)
        assert not missing, f"used by deploy/monitoring but not exposed: {missing}"
        text = scrape(wport)
        assert value(text, "utilitarian_amr_polls_total", protocol="mbus", outcome="done") == 1
        assert value(text, "utilitarian_amr_polls_total", protocol="mbus", outcome="failed") == 1
        assert value(text, "utilitarian_amr_events_total", kind="poll_failed") == 1
        assert value(text, "utilitarian_queue_messages", queue="utilitarian.tasks.dead") is not None
        worker.signal(signal.SIGTERM)
        beat.signal(signal.SIGTERM)
        assert worker.wait(60) == 0 and beat.wait(60) == 0
    finally:
        sim.stop()
        kit.close()
