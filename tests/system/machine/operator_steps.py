"""Scenarios of issue 15 item 5, run by driver.py inside the machine: what an operator types does
what docs/operations.md says. `d` is the driver's plumbing module (run, show, publish, sink, ...).

- restore: the documented restore steps, word for word, while a worker drains a slow task; shims
  for `rm` and `install` record, at the moment those steps run, which worker processes still live.
- reload_broken: `systemctl reload` with a broken TOML fails and the worker keeps its configuration;
  a bare HUP with a broken file is refused by the master and shown in its status.
- cli_interrupt: a hand-started `utilitarian beat` (the systemd-run wrapper) ends with its unit when
  the command gets TERM, a Ctrl-C while its output is piped, or a Ctrl-C on a terminal.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time

SHIMS = "/run/restore-shims"
WATCHED = ("utilitarian-worker@test.service", "utilitarian-worker@default.service", "utilitarian-beat.service")
SHIM = """#!/bin/sh
# Records what still runs when the documented restore reaches this step, then runs the real one.
{
  echo "== $(basename "$0")"
  for p in $(cat %(dir)s/pids); do [ -d "/proc/$p" ] && echo "alive $p"; done
  echo "active $(systemctl is-active %(units)s | tr '\\n' ' ')"
  awk -v id="$(cat %(dir)s/task)" '$1 == id {print "task " $3}' %(sink)s
} >>%(dir)s/log 2>&1
exec /usr/bin/$(basename "$0") "$@"
"""


def unit_pids(unit: str) -> list[int]:
    """Every process of a unit (master and children): those whose cgroup path ends in the unit's
    name, read from /proc (the same on cgroup v1 and v2 hosts)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cgroup") as fh:
                    if any(line.rstrip().endswith(f"/{unit}") for line in fh):
                        pids.append(int(entry))
            except OSError:  # exited meanwhile
                pass
    return pids


def wait_active(d, units, what: str) -> dict:
    """`systemctl start utilitarian.target` returns before its units are READY (they are ordered
    after it): wait for them."""
    def all_active():
        states = {u: d.show(u, "ActiveState", "MainPID") for u in units}
        return states if all(s["ActiveState"] == "active" for s in states.values()) else None
    return d.wait_until(all_active, 60, 0.2, what)


def restore(r, d):
    # Given a backup (the backup scenario made one) and the target running, the test worker among
    # its units, draining nothing yet,
    d.run(["systemctl", "start", d.WORKER_TEST], check=True)
    # when a slow task is running on it,
    (task,) = d.publish("system.sleep", "amr.scheduled.quarterly", 1, [4.0])
    d.wait_until(lambda: d.sink().get(task, {}).get("start"), 30, 0.05, "the slow task to start")
    pids = [p for unit in WATCHED for p in unit_pids(unit)]
    r["pids_before"] = pids
    r["mainpids"] = {u: d.show(u, "MainPID")["MainPID"] for u in WATCHED}
    os.makedirs(SHIMS, exist_ok=True)
    with open(f"{SHIMS}/pids", "w") as fh:
        fh.write(" ".join(map(str, pids)))
    with open(f"{SHIMS}/task", "w") as fh:
        fh.write(task)
    for name in ("rm", "install"):
        with open(f"{SHIMS}/{name}", "w") as fh:
            fh.write(SHIM % {"dir": SHIMS, "units": " ".join(WATCHED), "sink": d.SINK})
        os.chmod(f"{SHIMS}/{name}", 0o755)
    c = d.mark()
    # and the operator follows the documented restore,
    os.chdir("/root")
    r["doc"] = d.run_doc_script("restore", path_prefix=SHIMS)
    with open(f"{SHIMS}/log") as fh:
        r["shim_log"] = fh.read()
    # then every worker process was gone before the store was touched, the task had finished
    # (drained, not killed), and the target runs again on the restored store.
    r["task"] = d.sink().get(task, {})
    r["test_worker"] = d.show(d.WORKER_TEST, "ActiveState", "Result", "ExecMainStatus")
    r["after"] = wait_active(d, ("utilitarian-worker@default.service", "utilitarian-beat.service"),
                             "the target's units after the restore")
    r["journal_kill"] = [m for m in d.journal_text(c, d.WORKER_TEST) if "SIGKILL" in m or "Killing" in m]
    import sqlite3

    db = sqlite3.connect("file:/var/lib/utilitarian/utilitarian.sqlite3?mode=ro", uri=True)
    r["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    st = os.stat("/var/lib/utilitarian/utilitarian.sqlite3")
    r["store"] = {"uid": st.st_uid, "mode": oct(st.st_mode & 0o777)}


def reload_broken(r, d):
    unit, config = d.WORKER_TEST, d.CONFIG
    d.run(["systemctl", "start", unit], check=True)  # running since `ready`; started when run alone
    d.wait_until(lambda: d.worker_doc("test"), 30, 0.2, "the test worker's status")
    before = d.worker_doc("test")
    r["children_before"] = sorted(c["pid"] for c in before["children"])
    r["threads_before"] = [p["threads"] for p in before["pools"]]
    r["mainpid_before"] = d.show(unit, "MainPID")["MainPID"]
    with open(config) as fh:
        good = fh.read()
    try:
        # Given a typo in the TOML (an unclosed table header),
        with open(config, "w") as fh:
            fh.write(good.replace("[workers.test]", "[workers.test", 1))
        c = d.mark()
        # when the operator reloads, then systemctl says it failed and the master got no HUP;
        r["reload"] = d.out_of(d.run(["systemctl", "reload", unit]))
        r["after_reload"] = d.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
        r["reload_journal"] = d.journal_text(c, unit)
        # and a HUP sent past systemd is refused by the master itself, visibly in STATUS=.
        c = d.mark()
        d.run(["systemctl", "kill", "-s", "SIGHUP", "--kill-whom=main", unit], check=True)
        r["hup_status"] = d.wait_until(
            lambda: (lambda s: s if "reload failed" in s else None)(d.show(unit, "StatusText")["StatusText"]),
            15, 0.1, "the master to report the refused reload")
        r["hup_journal"] = d.wait_journal(c, unit, "reload failed")
    finally:
        with open(config, "w") as fh:
            fh.write(good)
    doc = d.worker_doc("test")
    r["status_reload_error"] = doc.get("reload_error")
    r["children_after"] = sorted(c["pid"] for c in doc["children"])
    r["threads_after"] = [p["threads"] for p in doc["pools"]]
    r["status_text"] = d.cli("status", "--no-queues").stdout
    # A good file reloads again, and the refusal leaves the status line.
    c = d.mark()
    r["reload_fixed"] = d.out_of(d.run(["systemctl", "reload", unit]))
    r["reload_fixed_journal"] = d.journal_text(c, unit)
    r["status_after_fix"] = d.wait_until(
        lambda: (lambda s: s if "reload failed" not in s else None)(d.show(unit, "StatusText")["StatusText"]),
        15, 0.1, "the status line without the refusal")


def transient_units() -> set[str]:
    out = subprocess.run(["systemctl", "list-units", "--all", "--no-legend", "--plain", "--type=service", "run-*"],
                         capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def hand_beat(d, start, interrupt, what: str) -> dict:
    """Start `utilitarian beat` through the wrapper, wait until it is connected, interrupt the
    command, and report how the command ended, what the beat said (its output is the command's,
    not the journal's) and what was left of its transient unit."""
    known = transient_units()
    wrapper, waiter, output = start()

    def new_unit():
        for unit in transient_units() - known:
            s = d.show(unit, "ActiveState", "MainPID")
            if s["ActiveState"] == "active" and s["MainPID"] not in ("", "0"):
                return unit, int(s["MainPID"])
        return None
    unit, main = d.wait_until(new_unit, 30, 0.1, f"the hand-started beat's unit ({what})")
    # Its signal handlers are in place before it connects.
    d.wait_until(lambda: "contending for the beat lock" in output(), 30, 0.1, f"the hand beat to connect ({what})")
    interrupt(wrapper)
    rc = waiter(40)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{main}") and time.monotonic() < deadline:
        time.sleep(0.1)
    found = {"unit": unit, "rc": rc, "main_gone": not os.path.exists(f"/proc/{main}"),
             "left": d.show(unit, "LoadState", "ActiveState"), "output": output()[-3000:]}
    d.run(["systemctl", "stop", unit])  # whatever the outcome, nothing of this case disturbs the next
    return found


def cli_interrupt(r, d):
    def piped(session: bool):
        def start():
            path = f"{d.OUT}/hand-beat-{'session' if session else 'term'}.log"
            with open(path, "w") as log:
                proc = subprocess.Popen(["utilitarian", "beat"], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=session)

            def waiter(timeout):
                try:
                    return proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    return "timeout"

            def output():
                with open(path, errors="replace") as fh:
                    return fh.read()
            return proc, waiter, output
        return start

    def terminate(proc):
        proc.send_signal(signal.SIGTERM)  # `kill PID`, `timeout`, a supervisor stopping the command

    def ctrl_c_piped(proc):
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends its foreground process group

    r["term"] = hand_beat(d, piped(False), terminate, "TERM")
    r["ctrl_c_piped"] = hand_beat(d, piped(True), ctrl_c_piped, "Ctrl-C, output piped")
    r["ctrl_c_tty"] = hand_beat(d, on_terminal, lambda fd: os.write(fd, b"\x03"), "Ctrl-C on a terminal")
    r["left_running"] = sorted(u for u in transient_units()
                               if d.show(u, "ActiveState")["ActiveState"] in ("active", "deactivating"))


def on_terminal():
    """`utilitarian beat` typed on a terminal: a pty is its stdin and stdout (the wrapper uses --pty)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("utilitarian", ["utilitarian", "beat"])
    seen = bytearray()

    def output():
        while select.select([fd], [], [], 0)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:  # the terminal's other side closed
                break
            if not data:
                break
            seen.extend(data)
        return seen.decode(errors="replace")

    def waiter(timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output()  # keep the terminal drained
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                output()
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        return "timeout"
    return fd, waiter, output
