"""The system test driver: runs as a oneshot unit inside a systemd booted by systemd-nspawn
(tests/system/conftest.py), with the host's RabbitMQ. It follows docs/operations.md word for word
(the scripts the host extracted into /in), then drives the installed units through every scenario
of issue 7 and writes what it saw to /out/results.json (after each scenario, so a hung run still
shows how far it got). pytest on the host asserts on that file. Standard library only: it runs
on the machine's /usr/bin/python3, before and after the virtualenv exists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import operator_steps
import plumbing
import upkeep
from plumbing import (
    CONFIG, DROPIN_DIR, HeldProxy, TEST_DROPIN, PARAMS, VENV_PY, WORKER_TEST, broker, cli, journal_text, mark,
    out_of, publish, results, run, run_doc_script, save, scenario, show, sink, wait_journal,
    wait_until, worker_doc, write_dropin,
)


# --- scenarios ------------------------------------------------------------------------------------
@scenario("install")
def install(r):
    os.chdir("/root")  # where the operator copied the bundle
    r["doc"] = run_doc_script("install", stdin=PARAMS["broker_password"] + "\n")
    r["active"] = {u: run(["systemctl", "is-active", u]).stdout.strip() for u in (
        "utilitarian.target", "utilitarian-worker@default.service", "utilitarian-beat.service",
        "utilitarian-worker-monthly.timer")}
    r["migrate"] = show("utilitarian-migrate.service", "Result", "ExecMainStatus", "ExecMainStartTimestampMonotonic")
    r["files"] = {}
    for path in ("/etc/utilitarian", CONFIG, "/etc/utilitarian/broker-password", "/var/lib/utilitarian",
                 "/run/utilitarian", "/opt/utilitarian/bin/utilitarian", "/usr/local/bin/utilitarian"):
        try:
            st = os.stat(path)
            r["files"][path] = {"mode": oct(st.st_mode & 0o7777), "uid": st.st_uid, "gid": st.st_gid}
        except FileNotFoundError:
            r["files"][path] = None
    r["user"] = run(["getent", "passwd", "utilitarian"]).stdout.strip()
    r["venv_python"] = os.path.realpath(VENV_PY)
    r["store"] = sorted(os.listdir("/var/lib/utilitarian"))
    store_owner = [os.stat(os.path.join("/var/lib/utilitarian", f)).st_uid for f in r["store"]]
    r["store_owners"] = sorted(set(store_owner))
    r["utilitarian_uid"] = int(r["user"].split(":")[2]) if r["user"] else None
    # The password reaches the units only through LoadCredential: a ping proves the whole chain.
    r["ping"] = out_of(cli("call", "utilitarian.ping"))
    wait_until(lambda: (worker_doc("default") or {}).get("totals", {}).get("done", 0) >= 1, 30, 0.2,
               "the default worker to run the ping")
    r["ping_done"] = True
    r["status_text"] = out_of(cli("status", "--no-queues"))


@scenario("verify")
def verify(r):
    units = ["/usr/local/lib/systemd/system/utilitarian-worker@.service", "utilitarian-worker@test.service",
             "utilitarian-worker@amr-monthly.service", "utilitarian-beat.service", "utilitarian.target",
             "utilitarian-migrate.service", "utilitarian-worker-monthly.timer"]
    r["verify"] = {}
    for unit in units:
        r["verify"][unit] = out_of(run(["systemd-analyze", "verify", unit]))
    r["security"] = {}
    for unit in ("utilitarian-worker@test.service", "utilitarian-beat.service", "utilitarian-migrate.service"):
        proc = run(["systemd-analyze", "security", "--no-pager", unit])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", proc.stdout)
        r["security"][unit] = {"exposure": float(m.group(1)) if m else None, "band": m.group(2) if m else None,
                               "rc": proc.returncode, "table": proc.stdout[-6000:]}
    cal = run(["systemctl", "show", "utilitarian-worker-monthly.timer", "-p", "NextElapseUSecRealtime",
               "-p", "TimersCalendar", "-p", "Unit"]).stdout
    r["timer"] = cal
    r["calendar"] = run(["systemd-analyze", "calendar", "--iterations=3", "*-*-01 00:05:00 UTC"]).stdout


TEST_PROFILE = """
# --- added by the system test -------------------------------------------------------------------
[workers.test]
graceful_timeout = 5.0
imports = ["system_tasks"]

[[workers.test.pools]]
name = "main"
queues = ["amr.scheduled.quarterly"]
processes = 2
threads = 4

[workers.badpass]
[[workers.badpass.pools]]
queues = ["amr.scheduled.daily"]

[workers.serial]
imports = ["system_tasks"]
[[workers.serial.pools]]
queues = ["amr.scheduled.hourly"]
processes = 1
threads = 2
"""
@scenario("setup")
def setup(r):
    with open(CONFIG, "a") as fh:
        fh.write(TEST_PROFILE)
    # The test profiles' task module is installed the way a site installs its own tasks: into the
    # venv (a .pth here), so `config check` and every unit can import it, as they must.
    site = run([VENV_PY, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               check=True).stdout.strip()
    with open(os.path.join(site, "utilitarian-system-tests.pth"), "w") as fh:
        fh.write("/srv/system-support\n")
    write_dropin(WORKER_TEST, "system-test.conf", TEST_DROPIN)
    # The monthly worker exits after 2 idle seconds instead of 300 (the shipped drop-in reads this).
    write_dropin("utilitarian-worker@amr-monthly.service", "zz-system-test.conf",
                 "[Service]\nEnvironment=UTILITARIAN_EXIT_WHEN_IDLE=2\n")
    run(["systemctl", "daemon-reload"], check=True)
    r["config_check"] = out_of(cli("config", "check"))
    # An unknown profile is a configuration error: started now, looked at again at the end.
    c = mark()
    r["nosuch_start"] = out_of(run(["systemctl", "start", "utilitarian-worker@nosuch.service"]))
    r["nosuch_show"] = show("utilitarian-worker@nosuch.service", "ActiveState", "SubState", "Result",
                            "ExecMainStatus", "NRestarts")
    r["nosuch_journal"] = wait_journal(c, "utilitarian-worker@nosuch.service", "no such worker profile")
    r["nosuch_checked_at"] = time.monotonic()
    # A password the broker refuses, handed over by LoadCredential= like the real one, is exit 78 too.
    with open("/etc/utilitarian/wrong-password", "w") as fh:
        fh.write("not-the-password\n")
    write_dropin("utilitarian-worker@badpass.service", "wrong-password.conf",
                 "[Service]\nLoadCredential=\nLoadCredential=broker-password:/etc/utilitarian/wrong-password\n")
    run(["systemctl", "daemon-reload"], check=True)
    c = mark()
    r["badpass_start"] = out_of(run(["systemctl", "start", "utilitarian-worker@badpass.service"]))
    r["badpass_show"] = show("utilitarian-worker@badpass.service", "ActiveState", "Result", "ExecMainStatus",
                             "NRestarts")
    r["badpass_journal"] = wait_journal(c, "utilitarian-worker@badpass.service", "Failed with result")


@scenario("ready")
def ready(r):
    # Given the test worker reaching the broker through a proxy that holds every connection,
    proxy = HeldProxy()
    with open(CONFIG) as fh:
        text = fh.read()
    held = "/etc/utilitarian/held-broker.toml"
    with open(held, "w") as fh:
        fh.write(re.sub(r'(?m)^(url = "amqp://[^"]*@127\.0\.0\.1):5672/', rf"\g<1>:{proxy.port}/", text, count=1))
    os.chmod(held, 0o640)
    os.chown(held, 0, int(run(["getent", "group", "utilitarian"]).stdout.split(":")[2]))
    write_dropin(WORKER_TEST, "held-broker.conf", f"[Service]\nEnvironment=UTILITARIAN_CONFIG={held}\n")
    run(["systemctl", "daemon-reload"], check=True)
    c = mark()
    samples = []

    def sample(label: str) -> list:
        s = show(WORKER_TEST, "ActiveState", "SubState", "StatusText")
        samples.append([label, round(time.monotonic(), 3), s["ActiveState"], s["SubState"], s["StatusText"]])
        return samples[-1]
    try:
        # when it starts (systemctl returns at once: --no-block),
        run(["systemctl", "start", "--no-block", WORKER_TEST], check=True)
        wait_until(lambda: proxy.waiting() >= 2, 30, 0.02, "both children to connect to the proxy")
        # it stays activating while no child has its broker connection,
        for _ in range(5):
            sample("none")
            time.sleep(0.1)
        # and while only one child consumes (a child may open more than one connection: release
        # them one at a time until the STATUS line, sent every second, counts one child),
        deadline = time.monotonic() + 20
        while not sample("one")[4].startswith("1/2"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never saw one child of two consuming: {samples[-3:]}")
            if not samples[-1][4].startswith("1/2") and proxy.forwarded < 1:
                proxy.release(1)
            time.sleep(0.1)
        r["forwarded_for_one"] = proxy.forwarded  # its control agent connects only once it consumes
        for _ in range(10):
            sample("one")
            time.sleep(0.1)
        # and becomes active (running) only once every child consumes.
        proxy.release(proxy.waiting())
        wait_until(lambda: sample("all")[2] == "active", 30, 0.02, "the test worker to become active")
    finally:
        r["samples"] = samples
        r["forwarded"] = proxy.forwarded
        r["journal"] = journal_text(c, WORKER_TEST)
        r["show"] = show(WORKER_TEST, "ActiveState", "SubState", "Type", "NotifyAccess", "WatchdogUSec", "MainPID",
                         "User", "StatusText", "LimitNOFILESoft")
        run(["systemctl", "stop", WORKER_TEST])
        os.unlink(f"{DROPIN_DIR}/{WORKER_TEST}.d/held-broker.conf")
        run(["systemctl", "daemon-reload"], check=True)
        proxy.close()
    # The plain `systemctl start` (blocking) of the next scenarios returns once READY came.
    c = mark()
    r["start"] = out_of(run(["systemctl", "start", WORKER_TEST]))
    r["after_start"] = show(WORKER_TEST, "ActiveState", "SubState", "StatusText")
    r["start_journal"] = wait_journal(c, WORKER_TEST, "children consuming: ready")


@scenario("status")
def status(r):
    wait_until(lambda: '"2/2 children' in run(["systemctl", "status", "--no-pager", WORKER_TEST]).stdout, 10,
               0.2, "the STATUS line")
    r["systemctl_status"] = run(["systemctl", "status", "--no-pager", "--lines=5", WORKER_TEST]).stdout
    r["utilitarian_status"] = out_of(cli("status", "--no-queues"))
    # RSS comes from psutil in the master: proves ProtectProc=invisible/ProcSubset=pid leave it
    # readable. The master samples it every 5 s.
    wait_until(lambda: all(c.get("rss") for c in (worker_doc("test") or {}).get("children", [{}])), 15, 0.5,
               "RSS of the children")
    r["status_json"] = worker_doc("test")


@scenario("reload")
def reload_(r):
    before = worker_doc("test")
    r["children_before"] = sorted(c["pid"] for c in before["children"])
    r["mainpid_before"] = show(WORKER_TEST, "MainPID")["MainPID"]
    # Given 60 tasks of 0.4 s in flight on 2 x 4 threads (about 3 s of work),
    ids = publish("system.sleep", "amr.scheduled.quarterly", 60, [0.4])
    r["published"] = len(ids)
    wait_until(lambda: sum(1 for i in ids if sink().get(i, {}).get("start")) >= 8, 30, 0.05, "tasks to start")
    # when the TOML changes (threads 4 -> 3) and the unit is reloaded,
    with open(CONFIG) as fh:
        text = fh.read()
    text = text.replace('name = "main"\nqueues = ["amr.scheduled.quarterly"]\nprocesses = 2\nthreads = 4',
                        'name = "main"\nqueues = ["amr.scheduled.quarterly"]\nprocesses = 2\nthreads = 3')
    with open(CONFIG, "w") as fh:
        fh.write(text)
    c = mark()
    r["reload"] = out_of(run(["systemctl", "reload", WORKER_TEST]))
    r["started_before_reload_done"] = sum(1 for i in ids if sink().get(i, {}).get("start"))
    r["done_at_reload"] = sum(1 for i in ids if sink().get(i, {}).get("done"))
    # then every task runs to completion exactly once and the children are replaced.
    wait_until(lambda: all(sink().get(i, {}).get("done") for i in ids), 60, 0.1, "all reload tasks to finish")

    def rolled():
        doc = worker_doc("test")
        if not doc:
            return None
        pids = {c["pid"] for c in doc["children"]}
        if len(pids) == 2 and not pids & set(r["children_before"]) and \
                all(c["state"] == "running" for c in doc["children"]):
            return doc
        return None
    doc = wait_until(rolled, 60, 0.2, "both children rolled")
    r["children_after"] = sorted(c["pid"] for c in doc["children"])
    r["threads_after"] = [p["threads"] for p in doc["pools"]]
    s = sink()
    r["runs"] = {"ids": len(ids), "done_once": sum(1 for i in ids if s.get(i, {}).get("done") == 1),
                 "done_twice_or_more": sum(1 for i in ids if s.get(i, {}).get("done", 0) > 1),
                 "missing": sum(1 for i in ids if not s.get(i, {}).get("done"))}
    r["show"] = show(WORKER_TEST, "ActiveState", "SubState", "MainPID", "NRestarts")
    r["journal"] = wait_journal(c, WORKER_TEST, "configuration reloaded")
    r["depth"] = broker("depth", "amr.scheduled.quarterly")


@scenario("stop")
def stop(r):
    # Given 6 tasks of 3 s running on all 6 threads (2 children x 3),
    ids = publish("system.sleep", "amr.scheduled.quarterly", 6, [3.0])
    wait_until(lambda: all(sink().get(i, {}).get("start") for i in ids), 30, 0.05, "all 6 tasks to start")
    c = mark()
    # when systemd stops the unit,
    t0 = time.monotonic()
    r["stop"] = out_of(run(["systemctl", "stop", WORKER_TEST]))
    r["stop_seconds"] = round(time.monotonic() - t0, 2)
    s = sink()
    # then every running task finished before the stop returned, and the unit is inactive, not failed.
    r["done"] = sum(1 for i in ids if s.get(i, {}).get("done") == 1)
    r["show"] = show(WORKER_TEST, "ActiveState", "SubState", "Result", "ExecMainStatus", "ExecMainCode")
    r["journal"] = wait_journal(c, WORKER_TEST, "stopped (exit 0)")
    r["depth"] = broker("depth", "amr.scheduled.quarterly", "dead")


# Issue 15 item 5 (tests/system/machine/operator_steps.py): the plumbing module is passed in.
restore = scenario("restore")(lambda r: operator_steps.restore(r, plumbing))
reload_broken = scenario("reload_broken")(lambda r: operator_steps.reload_broken(r, plumbing))
cli_interrupt = scenario("cli_interrupt")(lambda r: operator_steps.cli_interrupt(r, plumbing))


def main() -> None:
    results["boot"] = {"systemd": run(["systemctl", "--version"]).stdout.splitlines()[0],
                       "is_system_running": run(["systemctl", "is-system-running"]).stdout.strip()}
    save()
    install()
    if results["install"].get("error") or results["install"]["doc"]["rc"] != 0:
        return  # nothing else can run without the documented install
    steps = (verify, setup, ready, status, reload_, reload_broken, stop, upkeep.watchdog, upkeep.beat_failover,
             cli_interrupt, upkeep.monthly, upkeep.serial, upkeep.target_restart, upkeep.config_error_final,
             upkeep.backup, restore, upkeep.upgrade, upkeep.uninstall)
    only = PARAMS.get("only")  # a developer's shortcut (UTIL_SYSTEM_ONLY on the host); CI runs them all
    for step in steps:
        if not only or step.__name__ in only:
            step()


if __name__ == "__main__":
    with open(f"{plumbing.IN}/params.json") as fh:
        PARAMS.update(json.load(fh))
    try:
        main()
    finally:
        results["finished"] = True
        save()
        with open(f"{plumbing.OUT}/journal.txt", "w") as fh:
            subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic"], stdout=fh, stderr=subprocess.STDOUT)
