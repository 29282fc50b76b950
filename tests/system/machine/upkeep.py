"""Scenarios run after the worker's start and stop: watchdog, beat fail-over, the monthly round,
a serial meter, a target restart, a final config error, backup, upgrade and uninstall.
Registered with plumbing.scenario; driver.main runs them in order."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import operator_steps
import plumbing
from plumbing import (
    CONFIG, DROPIN_DIR, OUT, PARAMS, ROOT_ENV, SINK, TEST_DROPIN, VENV_BIN, WORKER_TEST, broker, mark, out_of,
    publish, results, run, run_doc_script, scenario, show, wait_journal, wait_until, write_dropin,
)


@scenario("watchdog")
def watchdog(r):
    run(["systemctl", "start", WORKER_TEST], check=True)
    first = show(WORKER_TEST, "MainPID", "NRestarts", "WatchdogUSec")
    r["before"] = first
    c = mark()
    # Given a master that stops answering (SIGSTOP: its loop no longer turns),
    r["kill"] = out_of(run(["systemctl", "kill", "-s", "SIGSTOP", "--kill-whom=main", WORKER_TEST]))
    t0 = time.monotonic()
    # then systemd's watchdog kills it and the unit restarts with a new master.
    after = wait_until(lambda: (lambda s: s if s["MainPID"] not in ("0", first["MainPID"])
                                and s["ActiveState"] == "active" else None)(
        show(WORKER_TEST, "MainPID", "ActiveState", "SubState", "NRestarts", "Result")), 60, 0.1,
        "the restarted worker")
    r["after"] = after
    r["seconds_to_active_again"] = round(time.monotonic() - t0, 2)
    r["journal"] = wait_journal(c, WORKER_TEST, "Watchdog timeout")
    r["old_master_gone"] = not os.path.exists(f"/proc/{first['MainPID']}")


@scenario("beat_failover")
def beat_failover(r):
    # Given the beat unit leads,
    unit = "utilitarian-beat.service"
    wait_until(lambda: show(unit, "StatusText")["StatusText"].startswith("leader"), 20, 0.1, "the unit to lead")
    r["unit_status_before"] = show(unit, "StatusText", "MainPID")
    # when an operator starts a second beat by hand (here with a notify socket to read its STATUS),
    notify_path = "/run/hand-beat.notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    sock.bind(notify_path)
    sock.settimeout(0.2)
    log = open(f"{OUT}/hand-beat.log", "w")
    hand = subprocess.Popen([VENV_BIN, "beat"], env={**ROOT_ENV, "NOTIFY_SOCKET": notify_path},
                            stdout=log, stderr=subprocess.STDOUT)
    statuses: list[str] = []

    def saw(prefix: str):
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            data = ""
        for line in data.splitlines():
            if line.startswith("STATUS="):
                statuses.append(line[7:])
        return any(s.startswith(prefix) for s in statuses)
    try:
        # it waits as a standby,
        wait_until(lambda: saw("standby"), 30, 0, "the hand-started beat to stand by")
        r["unit_status_while_standby"] = show(unit, "StatusText")["StatusText"]
        # and takes over once the unit stops.
        t0 = time.monotonic()
        r["stop"] = out_of(run(["systemctl", "stop", unit]))
        r["unit_after_stop"] = show(unit, "ActiveState", "Result", "ExecMainStatus")
        wait_until(lambda: saw("leader"), 30, 0, "the hand-started beat to lead")
        r["takeover_seconds"] = round(time.monotonic() - t0, 2)
    finally:
        r["hand_statuses"] = statuses
        hand.send_signal(signal.SIGTERM)
        try:
            r["hand_exit"] = hand.wait(20)
        except subprocess.TimeoutExpired:
            hand.kill()
            r["hand_exit"] = "killed"
        log.close()
        sock.close()
        with open(f"{OUT}/hand-beat.log") as fh:
            r["hand_log"] = fh.read()[-4000:]
    run(["systemctl", "start", unit], check=True)
    r["unit_restarted"] = show(unit, "ActiveState", "StatusText")


@scenario("monthly")
def monthly(r):
    unit = "utilitarian-worker@amr-monthly.service"
    # Given the month's polls queued for the timer-started worker,
    ids = publish("utilitarian.sleep", "amr.scheduled.monthly", 20, [0.1])
    ids += publish("utilitarian.sleep", "amr.scheduled.yearly", 5, [0.1])
    r["published"] = len(ids)
    r["depth_before"] = broker("depth", "amr.scheduled.monthly", "amr.scheduled.yearly")
    c = mark()
    # when the timer's unit starts,
    r["start"] = out_of(run(["systemctl", "start", unit]))
    r["props"] = show(unit, "RuntimeMaxUSec", "Restart", "ExecStart", "Environment")
    # then it works the queues empty and exits 0: inactive (dead), not failed.
    wait_until(lambda: show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed"), 60, 0.2,
               "the monthly worker to exit")
    r["show"] = show(unit, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    r["journal"] = wait_journal(c, unit, "exiting when idle")
    r["depth_after"] = broker("depth", "amr.scheduled.monthly", "amr.scheduled.yearly", "dead")
    r["timer"] = show("utilitarian-worker-monthly.timer", "ActiveState", "NextElapseUSecRealtime", "Unit")
    # The backstop: a round that outlives RuntimeMaxSec= (2 s here, never idle for 60 s) is stopped
    # by systemd, drains like any stop, and the unit is marked failed (timeout) for monitoring.
    write_dropin(unit, "zz-backstop.conf", "[Service]\nEnvironment=UTILITARIAN_EXIT_WHEN_IDLE=60\nRuntimeMaxSec=2\n")
    run(["systemctl", "daemon-reload"], check=True)
    c = mark()
    r["backstop_start"] = out_of(run(["systemctl", "start", unit]))
    wait_until(lambda: show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed"), 30, 0.2,
               "the backstop to stop the monthly worker")
    r["backstop_show"] = show(unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    r["backstop_journal"] = wait_journal(c, unit, "stopped (exit 0)")
    os.unlink(f"{DROPIN_DIR}/{unit}.d/zz-backstop.conf")
    run(["systemctl", "daemon-reload"], check=True)
    run(["systemctl", "reset-failed", unit])


@scenario("serial")
def serial(r):
    # Given a real serial port (the host's first UART, as a node of group dialout like udev makes
    # it) and a device the policy does not allow (tun),
    run(["mknod", "-m", "0660", "/dev/ttyS0", "c", "4", "64"])
    run(["mknod", "-m", "0660", "/dev/not-a-serial-port", "c", "10", "200"], check=True)
    run(["chgrp", "dialout", "/dev/ttyS0", "/dev/not-a-serial-port"], check=True)
    # when a profile runs with the documented drop-in,
    unit = "utilitarian-worker@serial.service"
    os.makedirs(f"{DROPIN_DIR}/{unit}.d", exist_ok=True)
    with open("/opt/utilitarian/share/doc/utilitarian/serial-meters.conf") as src, \
            open(f"{DROPIN_DIR}/{unit}.d/serial-meters.conf", "w") as dst:
        dst.write(src.read())
    write_dropin(unit, "system-test.conf", TEST_DROPIN.replace("WatchdogSec=3\n", ""))
    run(["systemctl", "daemon-reload"], check=True)
    r["start"] = out_of(run(["systemctl", "start", unit]))
    s = show(unit, "ActiveState", "SubState", "MainPID", "SupplementaryGroups", "DeviceAllow", "DevicePolicy",
             "PrivateDevices")
    r["show"] = s
    with open(f"/proc/{s['MainPID']}/status") as fh:
        r["groups"] = next((line.split(":", 1)[1].split() for line in fh if line.startswith("Groups:")), [])
    r["dialout_gid"] = run(["getent", "group", "dialout"]).stdout.split(":")[2]
    # then its tasks open the serial port and nothing else.
    ids = publish("system.open_device", "amr.scheduled.hourly", 1, ["/dev/ttyS0"])
    ids += publish("system.open_device", "amr.scheduled.hourly", 1, ["/dev/not-a-serial-port"])

    def outcomes():
        found = {}
        with open(SINK) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 3 and parts[0] in ids and parts[2].startswith("open:"):
                    _, path, outcome = parts[2].split(":")
                    found[path] = outcome
        return found if len(found) == 2 else None
    r["open"] = wait_until(outcomes, 30, 0.1, "the device probes")
    # Who enforces DeviceAllow= here: BPF on cgroup v2 (every current Debian/Ubuntu), the v1 devices
    # controller if systemd may write it, or nobody (a cgroup v1 host hands nspawn a read-only one).
    cgroup_fs = run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip()
    v1_dir = f"/sys/fs/cgroup/devices/system.slice/system-utilitarian\\x2dworker.slice/{unit}"
    r["device_cgroup"] = "bpf" if cgroup_fs == "cgroup2fs" else ("v1" if os.path.isdir(v1_dir) else "none")
    r["cgroup_fs"] = cgroup_fs
    proc = run(["systemd-analyze", "security", "--no-pager", unit])
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", proc.stdout)
    r["exposure"] = float(m.group(1)) if m else None
    r["verify"] = out_of(run(["systemd-analyze", "verify", unit]))
    r["stop"] = out_of(run(["systemctl", "stop", unit]))


@scenario("target_restart")
def target_restart(r):
    units = ("utilitarian-worker@default.service", "utilitarian-beat.service")
    before = {u: show(u, "MainPID")["MainPID"] for u in units}
    migrate_before = show("utilitarian-migrate.service", "ExecMainStartTimestampMonotonic")
    r["restart"] = out_of(run(["systemctl", "restart", "utilitarian.target"]))
    # The stop half waited for every unit (they are ordered after the target); their starts follow
    # the target's, so the restart returns before they are READY.
    r["old_gone_at_return"] = {u: not os.path.exists(f"/proc/{before[u]}") for u in units}
    after = operator_steps.wait_active(plumbing, units, "the units after the target's restart")
    r["before"], r["after"] = before, after
    r["migrate"] = {"before": migrate_before,
                    "after": show("utilitarian-migrate.service", "ExecMainStartTimestampMonotonic", "Result",
                                  "ExecMainStatus")}


@scenario("config_error_final")
def config_error_final(r):
    # Long after the failed starts (RestartSec=5 s has passed many times over): still failed, never restarted.
    r["seconds_since_start"] = round(time.monotonic() - results["setup"]["nosuch_checked_at"], 1)
    for profile in ("nosuch", "badpass"):
        r[profile] = show(f"utilitarian-worker@{profile}.service", "ActiveState", "SubState", "Result",
                          "ExecMainStatus", "NRestarts")


@scenario("backup")
def backup(r):
    import sqlite3

    os.chdir("/root")
    r["doc"] = run_doc_script("backup")
    found = sorted(os.listdir("/var/backups/utilitarian"))
    r["files"] = found
    if found:
        path = f"/var/backups/utilitarian/{found[-1]}"
        r["owner"] = os.stat(path).st_uid
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        r["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
        r["tables"] = sorted(t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        db.close()
    # Nothing in the state directory may belong to anyone but the service user (workers must open it all).
    r["state_owners"] = sorted({os.stat(os.path.join("/var/lib/utilitarian", f)).st_uid
                                for f in os.listdir("/var/lib/utilitarian")})
    r["utilitarian_uid"] = results["install"]["utilitarian_uid"]


@scenario("upgrade")
def upgrade(r):
    os.chdir("/root")
    with open(CONFIG) as fh:
        config_before = fh.read()
    run(["systemctl", "start", WORKER_TEST], check=True)
    before = {u: show(u, "MainPID")["MainPID"] for u in ("utilitarian-worker@default.service",
                                                         "utilitarian-beat.service", WORKER_TEST)}
    r["doc"] = run_doc_script("upgrade")
    after = {u: show(u, "MainPID", "ActiveState") for u in before}
    r["before"], r["after"] = before, after
    with open(CONFIG) as fh:
        r["config_kept"] = fh.read() == config_before
    r["version"] = open("/opt/utilitarian/share/doc/utilitarian/VERSION").read().strip()
    r["expected_version"] = PARAMS["upgrade_version"]
    r["cli_version"] = run([VENV_BIN, "--version"]).stdout.strip()
    r["test_worker_status"] = show(WORKER_TEST, "StatusText")["StatusText"]


@scenario("uninstall")
def uninstall(r):
    os.chdir("/root")
    r["doc"] = run_doc_script("uninstall")
    r["unit_files"] = run(["systemctl", "list-unit-files", "--no-legend", "utilitarian*"]).stdout
    r["units_loaded"] = run(["systemctl", "list-units", "--all", "--no-legend", "--plain", "utilitarian*"]).stdout
    r["processes"] = run(["pgrep", "-a", "-f", "/opt/utilitarian/bin"]).stdout
    r["exists"] = {p: os.path.exists(p) for p in ("/opt/utilitarian", "/usr/local/bin/utilitarian",
                                                  "/usr/local/lib/systemd/system/utilitarian-worker@.service",
                                                  "/etc/utilitarian/utilitarian.toml", "/var/lib/utilitarian")}
    r["user"] = run(["getent", "passwd", "utilitarian"]).stdout.strip()
    # No enablement symlink may be left behind (disabling the template removes every instance's).
    r["links"] = run(["find", "/etc/systemd/system", "-type", "l", "-name", "utilitarian*"]).stdout
    # --purge (described, not a documented block): configuration, data, drop-ins and the user go too.
    r["purge"] = out_of(run(["/usr/local/src/utilitarian-" + PARAMS["upgrade_version"] + "/deploy/uninstall.sh",
                             "--purge"]))
    r["after_purge"] = {p: os.path.exists(p) for p in ("/etc/utilitarian", "/var/lib/utilitarian",
                                                       f"{DROPIN_DIR}/{WORKER_TEST}.d")}
    r["user_after_purge"] = run(["getent", "passwd", "utilitarian"]).stdout.strip()
