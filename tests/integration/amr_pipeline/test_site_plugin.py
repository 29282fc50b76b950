"""A site's own package (examples/site_plugin, its own pyproject) installed with pip into a
directory of its own, then used the way a site would: a worker polls an ACME meter through the
package's execution environment in a scheduled round, runs its task, reads a Modbus meter with its
register map; `utilitarian read acme+tcp://...` takes its URL scheme. Nothing of the package is
imported by utilitarian except through the entry points."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from support.amr_harness import wait_for
from support.procs import Proc
from utilitarian import plugins
from utilitarian.amr.model import AmrTask
from utilitarian.amr.progress import round_progress
from utilitarian.amr.tasks import dispatch_schedule

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "site_plugin"
SLOT = "2026-11-24T00:00:00Z"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-installs the example into a fresh directory (not the test venv): what a site does with
    its own package, minus the dependency on utilitarian, which is already here."""
    target = tmp_path_factory.mktemp("site-packages")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, timeout=300,
                   env={**os.environ, "TMPDIR": str(build)})
    assert list(target.glob("acme_meters-1.0.0.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def site(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    plugins.clear_caches()
    yield installed
    for name in [m for m in sys.modules if m == "acme_meters" or m.startswith("acme_meters.")]:
        sys.modules.pop(name)
    plugins.clear_caches()


def env_with(site_dir) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(site_dir), str(pathlib.Path(__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}


def test_the_plugin_registers_through_every_group(site):
    from utilitarian.amr.environments import EXECUTION_TYPES, calls_of
    from utilitarian.amr.meter_types import load_registered_meter_types
    from utilitarian.amr.target import parse_meter_url
    from utilitarian.tasks import Registry

    assert EXECUTION_TYPES["acme_counter"] == "acme_meters.environment"
    assert list(calls_of("acme_counter")) == ["read_all"]
    target = parse_meter_url("acme+tcp://127.0.0.1?meter_id=A1")
    assert (target.protocol, target.port, target.option("meter_id")) == ("acme", 7700, "A1")
    assert target.url == "acme+tcp://127.0.0.1:7700?meter_id=A1"
    types = load_registered_meter_types()
    assert {"acme_em100", "eastron_sdm630"} <= set(types)
    from utilitarian.config import parse_config
    assert "acme.write_note" in Registry.for_config(parse_config({})).names()


def test_a_round_polls_a_meter_through_the_plugin_environment(site, amr, tmp_path):
    from acme_meters.sim import AcmeMeter

    from utilitarian.amr.meter_types import load_registered_meter_types
    from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

    modbus = ModbusFleetSimulator([SimModbusMeter(1, "acme_em100", name="em100")],
                                  meter_types=load_registered_meter_types())
    with AcmeMeter("A1", {"energy": "1234.5 kWh", "temperature": "21.5 °C"}) as meter, modbus:
        # Given an ACME meter and a Modbus meter of the plugin's register map in the registry
        amr.import_meters([{"name": "acme-1", "execution_type": "acme_counter",
                            "url": f"acme+tcp://127.0.0.1:{meter.port}?meter_id=A1&timeout=2",
                            "series": ["energy", "temperature"]}],
                          tasks=[AmrTask("acme-read", "daily", "read_all", "acme_counter")], group="acme")
        amr.import_meters(modbus.meter_entries(),
                          tasks=[AmrTask("em100-read", "daily", "read_values", "generic_modbus")], group="em")
        # When a worker (which knows the plugin only through its entry points) runs the round
        worker = Proc(["worker", "--config", str(amr.config_path), "-c", "1", "--threads", "2"],
                      env=env_with(site), log=tmp_path / "worker.log")
        amr.procs.append(worker)
        dispatch_schedule(amr.ctx("amr.dispatch_schedule"), "daily", SLOT)
        note = tmp_path / "notes.txt"
        amr.app.send_task("acme.write_note", [str(note), "round dispatched"])
        progress = wait_for(lambda: (p := round_progress(amr.store)) and p[0].pending == 0 and p[0],
                            timeout=90, what="the round to finish")
        wait_for(note.exists, timeout=30, what="the plugin's task")
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()[-2000:]
    # Then both meters were read and their readings committed
    assert (progress.jobs, progress.done, progress.failed) == (2, 2, 0)
    rows = {(r.meter, r.series): (r.value, r.unit) for r, _ in amr.store.tail_readings(limit=50)}
    assert rows[("acme-1", "energy")] == ("1234.5", "kWh") and rows[("acme-1", "temperature")] == ("21.5", "°C")
    assert {s for m, s in rows if m == "em100"} == {"voltage", "active_energy_import"}
    assert meter.requests == 1 and note.read_text() == "round dispatched\n"


def test_read_takes_the_plugin_scheme(site, tmp_path):
    from acme_meters.sim import AcmeMeter

    config = tmp_path / "empty.toml"
    config.write_text("")
    with AcmeMeter("B2", {"energy": "5 kWh"}) as meter:
        proc = subprocess.run([sys.executable, "-m", "utilitarian", "read", f"acme+tcp://127.0.0.1:{meter.port}"
                               "?meter_id=B2", "--config", str(config)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **env_with(site)})
        wrong = subprocess.run([sys.executable, "-m", "utilitarian", "read", f"acme+tcp://127.0.0.1:{meter.port}"
                                "?meter_id=XX", "--config", str(config)], capture_output=True, text=True,
                               timeout=60, env={**os.environ, **env_with(site)})
    assert proc.returncode == 0 and "energy" in proc.stdout and "kWh" in proc.stdout, proc.stderr
    assert wrong.returncode == 1 and "unknown meter" in wrong.stderr and "Traceback" not in wrong.stderr
