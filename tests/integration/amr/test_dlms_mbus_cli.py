"""`utilitarian read dlms+...` and `mbus+...` as an operator runs them: the real CLI in a process,
keys as a systemd credential (CREDENTIALS_DIRECTORY), exit codes by error kind, no key in output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from utilitarian_sim.dlms_meter import SimDlmsMeter
from utilitarian_sim.dlms_server import DlmsSimulator
from utilitarian_sim.faults import Faults
from utilitarian_sim.mbus_sim import MbusSimulator, SimMbusMeter


def read(*args: str, env: dict | None = None, tmp_path) -> tuple[int, str, str]:
    config = tmp_path / "empty.toml"
    config.write_text("")
    proc = subprocess.run([sys.executable, "-m", "utilitarian", "read", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def test_read_dlms_with_keys_from_a_credential(tmp_path):
    meter = SimDlmsMeter(security="hls-gmac")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    with DlmsSimulator([meter], transport="pty") as sim:
        (credentials / "meter-7-keys").write_text(sim.key_file_text(meter))
        url = sim.url(meter, keys="meter-7-keys") + "&timeout=2"
        env = {"CREDENTIALS_DIRECTORY": str(credentials)}
        code, out, err = read(url, "--json", env=env, tmp_path=tmp_path)
        assert code == 0, err
        document = json.loads(out)
        assert document["task_call"] == "read_registers"
        assert {r["series"] for r in document["readings"]} == {"1-0:1.8.0", "1-0:2.8.0"}
        # the wrong key: exit 1 (retrying will not help), the reason, no key anywhere
        (credentials / "meter-7-keys").write_text(
            f'authentication_key = "{meter.authentication_key.hex()}"\nencryption_key = "{bytes(16).hex()}"\n')
        code, out, err = read(url.replace("&invocation_counter=0-0:43.1.0*255", ""), env=env, tmp_path=tmp_path)
        assert code == 1 and "authentication" in err
        for text in (out, err):
            assert meter.encryption_key.hex() not in text and meter.authentication_key.hex() not in text
        # outside a unit a bare credential name is refused with a hint, before any I/O
        code, _out, err = read(url, tmp_path=tmp_path, env={"CREDENTIALS_DIRECTORY": ""})
        assert code == 1 and "CREDENTIALS_DIRECTORY" in err


def test_read_dlms_profile_and_clock(tmp_path):
    meter = SimDlmsMeter(clock_offset=30)
    with DlmsSimulator([meter]) as sim:
        code, out, err = read(sim.url(meter), "--call", "read_load_profile", "--kwargs",
                              '{"offset_seconds": 3600}', tmp_path=tmp_path)
        assert code == 0 and "1-0:1.8.0" in out and "Wh" in out, err
        code, out, err = read(sim.url(meter), "--call", "set_time", tmp_path=tmp_path)
        assert code == 0 and "Time adjusted" in out, err


def test_read_mbus_and_its_exit_codes(tmp_path):
    heat = SimMbusMeter(5, "12345678", telegrams=2)
    noisy = SimMbusMeter(6, "12345679", faults=Faults(collision=1.0))
    with MbusSimulator([heat, noisy]) as sim:
        code, out, err = read(sim.url(heat, secondary=True), tmp_path=tmp_path)
        assert code == 0 and "energy@s1" in out and "flow_temperature" in out and "°C" in out, err
        code, _out, err = read(sim.url(noisy) + "&timeout=0.5&retries=1", tmp_path=tmp_path)
        assert code == 75 and "collision" in err      # retryable: EX_TEMPFAIL
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    code, _out, err = read(f"mbus+tcp://127.0.0.1:{port}?address=1&timeout=0.5", tmp_path=tmp_path)
    assert code == 75
    code, _out, err = read("mbus+tcp://127.0.0.1:1?adress=1", tmp_path=tmp_path)
    assert code == 64 and "did you mean 'address'" in err
    code, _out, err = read("mbus+tcp://127.0.0.1:1", tmp_path=tmp_path)
    assert code == 64 and "address=PRIMARY" in err
