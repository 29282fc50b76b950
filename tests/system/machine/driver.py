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
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import operator_steps

IN, OUT = "/in", "/out"
VENV_PY = "/opt/utilitarian/bin/python"
VENV_BIN = "/opt/utilitarian/bin/utilitarian"
BROKER_TOOL = "/srv/system/broker_tool.py"
CONFIG = "/etc/utilitarian/utilitarian.toml"
SINK = "/var/lib/utilitarian/system-sink"
WORKER_TEST = "utilitarian-worker@test.service"
DROPIN_DIR = "/etc/systemd/system"
# Root reads the password file directly (it is what LoadCredential= hands the units).
ROOT_ENV = {**os.environ, "CREDENTIALS_DIRECTORY": "/etc/utilitarian", "UTILITARIAN_CONFIG": CONFIG}

results: dict = {}


# --- plumbing -------------------------------------------------------------------------------------
def save() -> None:
    tmp = f"{OUT}/results.json.tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    os.replace(tmp, f"{OUT}/results.json")


def run(cmd, *, input: str | None = None, timeout: float = 120.0, env=None, check: bool = False):
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          env=env, shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def out_of(proc) -> dict:
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def show(unit: str, *props: str) -> dict:
    args = ["systemctl", "show", unit]
    for p in props:
        args += ["-p", p]
    text = run(args, check=True).stdout
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key] = f"{values[key]}; {value}" if key in values else value  # DeviceAllow= repeats
    return values


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def mark() -> int:
    """Now on the journal's clock: the container shares the kernel's CLOCK_MONOTONIC, which stamps
    __MONOTONIC_TIMESTAMP. (Cursors are no use here: journald may store a service's stdout line
    after an entry systemd logged later, so "after this cursor" can skip it.)"""
    return int(time.monotonic() * 1e6)


def journal(since: int, unit: str | None = None) -> list[dict]:
    args = ["journalctl", "--no-pager", "-b", "-o", "json"]
    if unit:
        args += ["-u", unit]
    entries = []
    for line in run(args).stdout.splitlines():
        doc = json.loads(line)
        t = int(doc.get("__MONOTONIC_TIMESTAMP", 0))
        if t < since:
            continue
        msg = doc.get("MESSAGE", "")
        if isinstance(msg, list):
            msg = bytes(msg).decode("utf-8", "replace")
        entries.append({"t": t, "pid": doc.get("_PID"), "msg": msg})
    return sorted(entries, key=lambda e: e["t"])


def journal_text(since: int, unit: str | None = None) -> list[str]:
    return [e["msg"] for e in journal(since, unit)]


def wait_journal(since: int, unit: str, needle: str, timeout: float = 15.0) -> list[str]:
    """journald receives service output asynchronously: wait for the line rather than read once."""
    return wait_until(lambda: (lambda lines: lines if any(needle in m for m in lines) else None)(
        journal_text(since, unit)), timeout, 0.1, f"{needle!r} in the journal of {unit}")


def cli(*args: str, timeout: float = 60.0):
    """`utilitarian ...` as an operator types it: the /usr/local/bin wrapper (systemd-run)."""
    return run(["utilitarian", *args], timeout=timeout)


def status_json() -> dict:
    proc = cli("status", "--json", "--no-queues")
    return json.loads(proc.stdout) if proc.stdout.strip() else {"workers": [], "error": proc.stderr}


def worker_doc(profile: str) -> dict | None:
    for w in status_json().get("workers", []):
        if w.get("profile") == profile:
            return w
    return None


def broker(*args: str):
    proc = run([VENV_PY, BROKER_TOOL, *args], env=ROOT_ENV, timeout=60, check=True)
    return json.loads(proc.stdout)


def publish(task: str, queue: str, count: int, args: list) -> list[str]:
    return broker("publish", task, queue, str(count), json.dumps(args))


def sink() -> dict[str, dict[str, int]]:
    """task id -> {"start": n, "done": n}"""
    seen: dict[str, dict[str, int]] = {}
    try:
        with open(SINK) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 3:
                    counts = seen.setdefault(parts[0], {"start": 0, "done": 0})
                    counts[parts[2]] = counts.get(parts[2], 0) + 1
    except FileNotFoundError:
        pass
    return seen


def scenario(name: str):
    def wrap(func):
        def runner():
            started = time.monotonic()
            results[name] = {}
            try:
                func(results[name])
            except Exception as exc:  # recorded for pytest; the next scenario still runs
                results[name]["error"] = f"{type(exc).__name__}: {exc}"
                results[name]["traceback"] = traceback.format_exc()
            results[name]["seconds"] = round(time.monotonic() - started, 2)
            save()
        runner.__name__ = name
        return runner
    return wrap


def run_doc_script(name: str, stdin: str = "", path_prefix: str | None = None) -> dict:
    """One section of docs/operations.md, extracted by the host: bash, stop at the first error,
    echo each line as written (-v, not -x: the password must not appear expanded). `path_prefix`:
    a directory of shims that watch the steps (they run the real commands)."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    proc = run(["bash", "-euo", "pipefail", "-v", f"{IN}/{name}.sh"], input=stdin, timeout=240, env={
        "PATH": f"{path_prefix}:{path}" if path_prefix else path, "HOME": "/root",
        "LANG": "C.UTF-8", "TERM": "dumb"})
    return out_of(proc)


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
TEST_DROPIN = """[Service]
Environment=PYTHONPATH=/srv/system-support UTIL_SYSTEM_SINK=/var/lib/utilitarian/system-sink
WatchdogSec=3
"""


def write_dropin(unit: str, name: str, text: str) -> None:
    path = f"{DROPIN_DIR}/{unit}.d"
    os.makedirs(path, exist_ok=True)
    with open(f"{path}/{name}", "w") as fh:
        fh.write(text)


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


class HeldProxy:
    """A TCP proxy to the broker that accepts connections but forwards none until released, one
    by one: it decides when each child of a worker can finish its broker handshake."""

    def __init__(self, target=("127.0.0.1", 5672)):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pending: list[socket.socket] = []
        self.forwarded = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept_all, daemon=True).start()

    def accept_all(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            # A child's control agent connects only once the child consumes: held here, it cannot
            # take the place of the child connection the test means to release first.
            with self.lock:
                self.pending.append(conn)

    def forward(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def waiting(self) -> int:
        with self.lock:
            return len(self.pending)

    def release(self, count: int = 1) -> int:
        with self.lock:
            batch, self.pending = self.pending[:count], self.pending[count:]
        for conn in batch:
            self.forward(conn)
        self.forwarded += len(batch)
        return len(batch)

    @staticmethod
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


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
                         "User", "StatusText")
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
    after = operator_steps.wait_active(sys.modules[__name__], units, "the units after the target's restart")
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


# Issue 15 item 5 (tests/system/machine/operator_steps.py): the helpers above are passed in.
restore = scenario("restore")(lambda r: operator_steps.restore(r, sys.modules[__name__]))
reload_broken = scenario("reload_broken")(lambda r: operator_steps.reload_broken(r, sys.modules[__name__]))
cli_interrupt = scenario("cli_interrupt")(lambda r: operator_steps.cli_interrupt(r, sys.modules[__name__]))


def main() -> None:
    results["boot"] = {"systemd": run(["systemctl", "--version"]).stdout.splitlines()[0],
                       "is_system_running": run(["systemctl", "is-system-running"]).stdout.strip()}
    save()
    install()
    if results["install"].get("error") or results["install"]["doc"]["rc"] != 0:
        return  # nothing else can run without the documented install
    steps = (verify, setup, ready, status, reload_, reload_broken, stop, watchdog, beat_failover, cli_interrupt,
             monthly, serial, target_restart, config_error_final, backup, restore, upgrade, uninstall)
    only = PARAMS.get("only")  # a developer's shortcut (UTIL_SYSTEM_ONLY on the host); CI runs them all
    for step in steps:
        if not only or step.__name__ in only:
            step()


if __name__ == "__main__":
    with open(f"{IN}/params.json") as fh:
        PARAMS = json.load(fh)
    try:
        main()
    finally:
        results["finished"] = True
        save()
        with open(f"{OUT}/journal.txt", "w") as fh:
            subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic"], stdout=fh, stderr=subprocess.STDOUT)
