"""Plumbing of the system test driver (driver.py): running commands, reading units and the journal,
the broker tool, the task sink, the scenario recorder and a TCP proxy that holds connections.
Standard library only, like the driver."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import traceback


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
PARAMS: dict = {}  # /in/params.json, read by driver.py before main()
# The test worker's drop-in: setup writes it, the watchdog scenario writes it without WatchdogSec.
TEST_DROPIN = """[Service]
Environment=PYTHONPATH=/srv/system-support UTIL_SYSTEM_SINK=/var/lib/utilitarian/system-sink
WatchdogSec=3
"""


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


def write_dropin(unit: str, name: str, text: str) -> None:
    path = f"{DROPIN_DIR}/{unit}.d"
    os.makedirs(path, exist_ok=True)
    with open(f"{path}/{name}", "w") as fh:
        fh.write(text)


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
