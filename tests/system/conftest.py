"""Boots a real systemd in systemd-nspawn (shared/recipes/systemd-nspawn.md) once per test run:
builds the release bundle with deploy/bundle.sh, gives the machine a fresh vhost and broker user
on the host's RabbitMQ, lets tests/system/machine/driver.py follow docs/operations.md and drive
every scenario, and hands its /out/results.json to the tests. Needs root and systemd-nspawn: in
CI a missing prerequisite fails, elsewhere the tests skip with the reason."""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest

from system.docsteps import script

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINE = pathlib.Path(__file__).resolve().parent / "machine"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BOOT_TIMEOUT = 420  # seconds for the whole machine run; the driver needs about 90


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if not shutil.which("systemd-nspawn"):
        return "systemd-nspawn is not installed (apt-get install systemd-container)"
    if not os.path.exists("/usr/bin/python3") or subprocess.run(
            ["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        return "/usr/bin/python3 with venv is needed (apt-get install python3-venv)"
    if not os.path.exists("/usr/lib/systemd/system/dbus.socket"):
        return "dbus is needed inside the machine for systemd-run (apt-get install dbus)"
    return None


def build_bundle(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    built = subprocess.run([str(src / "deploy" / "bundle.sh"), str(out)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHON": "/usr/bin/python3"})
    assert built.returncode == 0, f"deploy/bundle.sh failed:\n{built.stdout}\n{built.stderr}"
    return pathlib.Path(built.stdout.strip().splitlines()[-1])


@dataclass
class MachineRun:
    results: dict
    out: pathlib.Path
    seconds: float
    console: str

    def scenario(self, name: str) -> dict:
        r = self.results.get(name)
        if r is None:
            pytest.fail(f"scenario {name!r} did not run; see {self.out}/journal.txt and console.log\n"
                        f"{self.console[-3000:]}", pytrace=False)
        if r.get("error"):
            pytest.fail(f"scenario {name!r} failed in the machine: {r['error']}\n{r.get('traceback', '')}"
                        f"(journal: {self.out}/journal.txt)", pytrace=False)
        return r


@pytest.fixture(scope="session")
def machine(rabbit, tmp_path_factory) -> MachineRun:
    reason = missing_prerequisite()
    if reason:
        if IN_CI:
            pytest.fail(f"system tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    if not rabbit.has_ctl:
        pytest.fail("system tests need rabbitmqctl for a vhost and user of their own", pytrace=False)
    base = tmp_path_factory.mktemp("system")
    inbox, out = base / "in", base / "out"
    inbox.mkdir()
    out.mkdir()
    # The release bundles, built as an operator builds them, with the Python the machine has: this
    # tree, and the same code as a later release (version bumped) for the documented upgrade.
    bundle = build_bundle(REPO, base / "dist")
    newer = base / "newer"
    newer.mkdir()
    for part in ("pyproject.toml", "README.md", "utilitarian", "deploy", "systemd", "etc", "docs"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy2
        copy(REPO / part, newer / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / part).is_dir() else {}))
    for path, pattern in ((newer / "pyproject.toml", r'^version = "(.*)"$'),
                          (newer / "utilitarian" / "__init__.py", r'^__version__ = "(.*)"$')):
        path.write_text(re.sub(pattern, lambda m: m.group(0).replace(m.group(1), m.group(1) + ".post1"),
                               path.read_text(), count=1, flags=re.M))
    upgrade_bundle = build_bundle(newer, base / "dist")
    # A broker user and vhost like a site's: the password reaches the units only via LoadCredential.
    vhost = rabbit.add_vhost("sys")
    # Never a leading "-" in the password: rabbitmqctl add_user would read it as an option.
    user, password = f"utilsys-{secrets.token_hex(4)}", "p" + secrets.token_urlsafe(16)
    rabbit.ctl("add_user", user, password)
    rabbit.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    url = f"amqp://{user}@127.0.0.1:5672/{vhost}"
    for section, name in (("install", bundle.name), ("backup", bundle.name), ("restore", bundle.name),
                          ("upgrade", upgrade_bundle.name), ("uninstall", upgrade_bundle.name)):
        (inbox / f"{section}.sh").write_text(script(section, {"BUNDLE": name, "BROKER_URL": url}))
    # UTIL_SYSTEM_ONLY=restore,reload_broken runs the install, then only those scenarios (development).
    only = [n for n in os.environ.get("UTIL_SYSTEM_ONLY", "").split(",") if n]
    (inbox / "params.json").write_text(json.dumps({"broker_password": password, "vhost": vhost, "only": only,
                                                   "upgrade_version": upgrade_bundle.name[len("utilitarian-"):-7]}))
    name = f"utiltest{secrets.token_hex(3)}"
    cmd = ["timeout", "--kill-after=10", str(BOOT_TIMEOUT), "systemd-nspawn", "--quiet", "--volatile=yes", "-D", "/",
           "--register=no", "--keep-unit", "-M", name,
           # A server's /usr/local is writable (units, sysusers.d, the `utilitarian` command go there).
           "--overlay=/usr/local::/usr/local",
           f"--bind-ro={bundle}:/root/{bundle.name}", f"--bind-ro={upgrade_bundle}:/root/{upgrade_bundle.name}",
           f"--bind-ro={MACHINE}:/srv/system",
           f"--bind-ro={REPO / 'tests' / 'support'}:/srv/system-support",
           f"--bind-ro={MACHINE / 'system-test-driver.service'}:/etc/systemd/system/system-test-driver.service",
           # Debian's alternatives (awk, editor ...) as on any server; /etc starts empty otherwise.
           "--bind-ro=/etc/alternatives",
           f"--bind-ro={inbox}:/in", f"--bind={out}:/out",
           "-b", "systemd.unit=system-test-driver.service",
           "systemd.firstboot=off"]
    started = time.monotonic()
    try:
        with open(out / "console.log", "w") as console:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
    finally:
        rabbit.delete_vhost(vhost)
        rabbit.ctl("delete_user", user, check=False)
    seconds = time.monotonic() - started
    console_text = (out / "console.log").read_text(errors="replace")
    results_path = out / "results.json"
    if not results_path.exists():
        pytest.fail(f"the machine wrote no results (exit {proc.returncode} after {seconds:.0f}s):\n"
                    f"{console_text[-5000:]}", pytrace=False)
    results = json.loads(results_path.read_text())
    if proc.returncode == 124 or not results.get("finished"):
        pytest.fail(f"the machine run did not finish within {BOOT_TIMEOUT}s; it got as far as "
                    f"{list(results)}; see {out}", pytrace=False)
    return MachineRun(results, out, seconds, console_text)
