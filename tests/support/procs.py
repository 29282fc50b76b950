"""Real processes for tests: start the CLI, wait on conditions with deadlines, read sinks, listen
as systemd would on a NOTIFY_SOCKET, and clean up whatever a failed test left running."""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def write_config(path: pathlib.Path, broker_url: str, extra: str = "") -> pathlib.Path:
    state = path.parent / "state"
    run = path.parent / "run"
    path.write_text(f'[broker]\nurl = "{broker_url}"\nretry_backoff_max = 1.0\n\n'
                    f'[paths]\nstate_dir = "{state}"\nruntime_dir = "{run}"\n\n'
                    f'[beat]\nbuiltin_schedules = false\n\n{extra}\n')
    return path


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, needle: str) -> bool:
        return any(needle in m for m in self.poll())

    def close(self) -> None:
        self.sock.close()


class Proc:
    """A utilitarian subprocess with its output captured to a file (no pipe to fill up)."""

    def __init__(self, args: list[str], *, env: dict | None = None, cwd: pathlib.Path | None = None,
                 log: pathlib.Path):
        self.log_path = log
        self.log_file = open(log, "wb")
        full_env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("NOTIFY_SOCKET", None) if env is None or "NOTIFY_SOCKET" not in env else None
        self.popen = subprocess.Popen([sys.executable, "-m", "utilitarian", *args], env=full_env,
                                      stdout=self.log_file, stderr=subprocess.STDOUT, cwd=cwd or REPO,
                                      start_new_session=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_tree(self) -> None:
        """Whatever the test did, leave nothing behind: the whole session, and the sessions of its
        descendants (the demo starts its worker and beat in sessions of their own), listed before
        the kill, which would hand them to init."""
        import psutil

        groups = {self.popen.pid}
        try:
            descendants = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        for child in descendants:
            try:
                groups.add(os.getpgid(child.pid))
            except ProcessLookupError:
                pass
        groups.discard(os.getpgid(0))  # never the test run's own group
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log_file.close()


def read_sink(path: pathlib.Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), parts[2]))
    return out


def ran_counts(path: pathlib.Path) -> collections.Counter:
    return collections.Counter(task_id for task_id, _pid, what in read_sink(path) if what == "ran")


def children_of(pid: int) -> list[int]:
    """The worker children of a master (its control agent is a thread in them, not a process)."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []
