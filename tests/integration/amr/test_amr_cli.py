"""`utilitarian read` and `utilitarian simulate` as operators use them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from utilitarian_sim import IecSimulator, ModbusFleetSimulator, SimIecMeter, SimModbusMeter
from utilitarian.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(autouse=True)
def no_site_config(monkeypatch, tmp_path):
    # `read` loads the config like every command; point it at an empty one.
    empty = tmp_path / "utilitarian.toml"
    empty.write_text("")
    monkeypatch.setenv("UTILITARIAN_CONFIG", str(empty))


def test_read_modbus_table_and_json(capsys):
    meter = SimModbusMeter(1, "eastron_sdm120", values={"voltage": "231.5"})
    with ModbusFleetSimulator([meter]) as sim:
        assert main(["read", sim.url(meter)]) == 0
        table = capsys.readouterr().out
        assert main(["read", sim.url(meter), "--json", "--kwargs", '{"series": ["voltage"]}']) == 0
        document = json.loads(capsys.readouterr().out)
    assert "SERIES" in table and "231.5" in table and "voltage" in table
    assert document["task_call"] == "read_values"
    assert document["readings"] == [{"series": "voltage", "timestamp": document["readings"][0]["timestamp"],
                                     "value": "231.5", "unit": "V"}]


def test_read_iec_with_password_from_environment(capsys, monkeypatch):
    meter = SimIecMeter("12345678", password="s3cret")
    monkeypatch.setenv("METER_PW", "s3cret")
    with IecSimulator([meter]) as sim:
        code = main(["read", sim.url(meter), "--call", "read_values", "--password-env", "METER_PW",
                     "--kwargs", '{"addresses": ["1.8.0"]}'])
    out = capsys.readouterr()
    assert code == 0 and "1.8.0" in out.out and "kWh" in out.out
    assert "s3cret" not in out.out + out.err


def test_read_exit_codes(capsys):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert main(["read", f"modbus+tcp://127.0.0.1:{port}?type=eastron_sdm120&timeout=0.5"]) == 75
    err = capsys.readouterr().err
    assert err.startswith("utilitarian: ") and "cannot connect" in err
    assert main(["read", "modbus+tcp://127.0.0.1:1?devcie_id=3"]) == 64
    assert "did you mean 'device_id'" in capsys.readouterr().err
    assert main(["read", "lis200+tcp://127.0.0.1:1"]) == 64          # LIS-200 needs --call
    assert main(["read", f"modbus+tcp://127.0.0.1:{port}?type=eastron_sdm120",
                 "--call", "readout"]) == 64
    assert "generic_modbus.readout" in capsys.readouterr().err
    meter = SimModbusMeter(1, "eastron_sdm120")
    with ModbusFleetSimulator([meter]) as sim:
        wrong_map = sim.url(meter).replace("eastron_sdm120", "eastron_sdm630")
        assert main(["read", wrong_map, "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == {"kind": "unsupported", "retryable": False,
                                            "message": json.loads(out.out)["error"]["message"]}


def test_read_with_site_meter_types(tmp_path, capsys):
    site = tmp_path / "types.toml"
    site.write_text('[meter_types.my_meter]\nfunction = 4\n[[meter_types.my_meter.registers]]\n'
                    'series = "volts"\naddress = 0\ndata_type = "float32"\nunit = "V"\n')
    meter = SimModbusMeter(1, "eastron_sdm120", values={"voltage": "229.9"})
    with ModbusFleetSimulator([meter]) as sim:
        url = sim.url(meter).replace("eastron_sdm120", "my_meter")
        assert main(["read", url, "--meter-types", str(site)]) == 0
    assert "volts" in capsys.readouterr().out
    site.write_text('[meter_types.my_meter]\n[[meter_types.my_meter.registers]]\nseries = "v"\n'
                    'address = 0\nfunction = 4\ndata_type = "float23"\n')
    assert main(["read", "modbus+tcp://127.0.0.1:1?type=my_meter", "--meter-types", str(site)]) == 78
    assert "meter_types.my_meter.registers[0].data_type" in capsys.readouterr().err


def test_help_documents_the_simulator(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    for word in ("modbus", "iec", "lis200", "fleet", "--meters-out", "pty", "latency"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["read", "--help"])
    assert "exit codes" in capsys.readouterr().out


def test_simulate_process_writes_meter_list_and_serves(tmp_path):
    # Given the simulator started as a process, as an operator would
    meters_file = tmp_path / "meters.toml"
    env = {**os.environ, "UTILITARIAN_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "utilitarian", "simulate", "fleet", "--modbus", "3",
                             "--iec", "2", "--lis200", "1", "--password", "pw",
                             "--meters-out", str(meters_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not meters_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert meters_file.exists(), proc.stderr.read() if proc.poll() is not None else "no file"
        # When the registry reads the meter list
        meters = tomllib.loads(meters_file.read_text())["meters"]
        # Then every meter is readable with the URL it names
        kinds = [m["execution_type"] for m in meters]
        assert kinds == ["generic_modbus"] * 3 + ["generic_iec6205621"] * 2 + ["generic_lis200"]
        assert {m["password"] for m in meters if "password" in m} == {"pw"}
        assert all(set(m) >= {"name", "meter_type", "url", "interface", "can_block", "timezone", "series"}
                   for m in meters)
        assert oct(meters_file.stat().st_mode & 0o777) == "0o600"
        for meter in (meters[0], meters[3]):
            done = subprocess.run([sys.executable, "-m", "utilitarian", "read", meter["url"], "--json"],
                                  env=env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            series = {r["series"] for r in json.loads(done.stdout)["readings"]}
            assert series <= set(meter["series"]) and series
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
