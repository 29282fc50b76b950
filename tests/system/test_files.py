"""Fast checks of the shipped units, scripts and docs that need no root and no machine: what the
system tests run must be what an operator gets (docs/operations.md, deploy/, systemd/)."""

from __future__ import annotations

import configparser
import pathlib
import re
import subprocess
import sys

import pytest

from system import docsteps
from utilitarian.config import parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
SERVICES = ["utilitarian-worker@.service", "utilitarian-beat.service", "utilitarian-migrate.service"]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(SYSTEMD / name)
    return parser


def seconds(text: str) -> float:
    """systemd time spans as the units use them: 90, 90s, 15min, 1d."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min|h|d)?", text.strip())
    assert m, text
    return float(m.group(1)) * {"s": 1, None: 1, "min": 60, "h": 3600, "d": 86400}[m.group(2)]


def test_doc_has_every_tested_section_and_only_values_in_the_site_block():
    found = docsteps.blocks()
    assert set(found) == {"site", "install", "backup", "restore", "upgrade", "uninstall"}
    assert set(docsteps.site_values()) == {"BUNDLE", "BROKER_URL"}
    script = docsteps.script("install", {"BUNDLE": "b.tar.gz", "BROKER_URL": "amqp://u@h/v"})
    assert "deploy/install.sh" in script and "systemctl enable --now" in script


def test_site_block_must_hold_assignments_only():
    text = "<!-- system-test: site -->\n```bash\nBUNDLE=x\nrm -rf /\n```\n"
    with pytest.raises(ValueError):
        docsteps.site_values(text)


@pytest.fixture
def server_config(tmp_path, monkeypatch):
    """etc/utilitarian.server.toml as the units read it: the password comes from the credential."""
    (tmp_path / "broker-password").write_text("secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    return parse_config(tomllib.loads((REPO / "etc" / "utilitarian.server.toml").read_text()), file="server")


def test_worker_stop_timeout_outlasts_every_profiles_drain(server_config):
    config = server_config
    stop = seconds(unit("utilitarian-worker@.service")["Service"]["TimeoutStopSec"])
    for name, profile in config.workers.items():
        graceful = config.worker.graceful_timeout if profile.graceful_timeout is None else profile.graceful_timeout
        assert stop > graceful + 1.0, f"TimeoutStopSec={stop} does not outlast {name}'s drain ({graceful} s + 1 s)"


def test_services_share_the_contract():
    for name in SERVICES:
        service = unit(name)["Service"]
        assert service["User"] == "utilitarian", name
        assert service["LoadCredential"] == "broker-password:/etc/utilitarian/broker-password", name
        assert service["ExecStart"].startswith("/opt/utilitarian/bin/utilitarian "), name
        assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes", name
    for name in ("utilitarian-worker@.service", "utilitarian-beat.service"):
        service = unit(name)["Service"]
        assert (service["Type"], service["NotifyAccess"], service["KillMode"]) == ("notify", "main", "mixed")
        assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "78"
        assert "WatchdogSec" in service and "TimeoutAbortSec" in service
        assert unit(name)["Unit"]["PartOf"] == "utilitarian.target"


def test_install_script_installs_every_shipped_unit():
    shipped = sorted(p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".target", ".timer"))
    text = (REPO / "deploy" / "install.sh").read_text()
    listed = re.search(r'UNITS="([^"]*)"', text).group(1).split()
    assert sorted(listed) == shipped
    for dropin in SYSTEMD.glob("*.d/*.conf"):
        assert str(dropin.relative_to(SYSTEMD)) in text


def test_server_example_config_is_valid(server_config):
    config = server_config
    assert config.broker_url() == "amqp://utilitarian:secret@127.0.0.1:5672/"
    assert {"default", "amr-monthly"} <= set(config.workers)
    monthly = {q for pool in config.workers["amr-monthly"].pools for q in pool.queues}
    assert monthly == {"amr.scheduled.monthly", "amr.scheduled.yearly"}


def test_shell_scripts_parse():
    for script in sorted((REPO / "deploy").glob("*.sh")):
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script.name, proc.stderr)
