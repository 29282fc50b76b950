"""Test helpers for the beat: configs, real `utilitarian beat` processes with their own
NOTIFY_SOCKET, and a consumer that records every fire by task id."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, url: str, entries: dict, *, beat: dict | None = None, extra: str = "") -> Path:
    """A beat config without the built-in schedules (their AMR tasks are another component's)."""
    lines = ["[broker]", f"url = {toml_value(url)}", "retry_backoff_max = 2.0", "",
             "[worker]", 'imports = ["support.beat_tasks"]', "", "[beat]", "builtin_schedules = false"]
    for key, value in (beat or {}).items():
        lines.append(f"{key} = {toml_value(value)}")
    for name, table in entries.items():
        lines += ["", f"[schedule.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utilitarian", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), cwd=REPO)


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every notification."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bn")  # short: AF_UNIX paths are limited to 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.notes: list[tuple[float, dict]] = []  # (monotonic time received, key -> value)
        self.cond = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            note = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.cond:
                self.notes.append((time.monotonic(), note))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout: float, since: float = 0.0) -> tuple[float, dict] | None:
        """The first note received after `since` (monotonic) that satisfies predicate."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, note in self.notes:
                    if at >= since and predicate(note):
                        return at, note
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def statuses(self) -> list[str]:
        with self.cond:
            return [n["STATUS"] for _, n in self.notes if "STATUS" in n]

    def last_status(self) -> str | None:
        found = self.statuses()
        return found[-1] if found else None

    def close(self) -> None:
        self.running = False
        self.sock.close()
        self.thread.join(2)
        shutil.rmtree(self.dir, ignore_errors=True)


class BeatProcess:
    """`python -m utilitarian beat --config F` with its own NOTIFY_SOCKET and log file."""

    def __init__(self, config: Path, log_path: Path, *, watchdog_usec: int | None = None):
        self.notify = NotifyListener()
        extra = {"NOTIFY_SOCKET": self.notify.path}
        if watchdog_usec:
            extra["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "utilitarian", "beat", "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=cli_env(**extra), cwd=REPO)
        self.pid = self.proc.pid

    def is_leader(self) -> bool:
        status = self.notify.last_status()
        return bool(status and status.startswith("leader"))

    def wait_ready(self, timeout: float = 30.0) -> dict:
        found = self.notify.wait_for(lambda n: n.get("READY") == "1", timeout)
        assert found, f"beat {self.pid} sent no READY=1 within {timeout}s; log:\n{self.log_text()}"
        return found[1]

    def signal(self, sig: int) -> float:
        os.kill(self.pid, sig)
        return time.monotonic()

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Cleanup: TERM, then KILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(10) is None:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        self.notify.close()


@dataclass(frozen=True)
class SeenFire:
    task_id: str
    schedule: str
    slot: str
    leader: str | None
    at: float  # monotonic time received
    wall: float  # wall time received
    kwargs: dict = field(default_factory=dict)


class FireConsumer:
    """Consumes task queues on its own connection and records every fire (auto-ack)."""

    def __init__(self, url: str, queues: list[str]):
        import pika

        self.fires: list[SeenFire] = []
        self.error: Exception | None = None
        self.cond = threading.Condition()
        self.running = True
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = self.connection.channel()
        for queue in queues:
            channel.basic_consume(queue, self.on_message, auto_ack=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.running:
                self.connection.process_data_events(time_limit=0.1)
        except Exception as exc:  # the broker went away (restart tests): stop recording
            self.error = exc

    def on_message(self, _channel, _method, props, body) -> None:
        wall, mono = time.time(), time.monotonic()
        headers = props.headers or {}
        kwargs = json.loads(body)[1]
        fire = SeenFire(headers["id"], headers.get("utilitarian_schedule"), headers.get("utilitarian_slot"),
                        headers.get("utilitarian_leader"), mono, wall, kwargs)
        with self.cond:
            self.fires.append(fire)
            self.cond.notify_all()

    def snapshot(self) -> list[SeenFire]:
        with self.cond:
            return list(self.fires)

    def wait_for(self, predicate, timeout: float) -> SeenFire | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for fire in self.fires:
                    if predicate(fire):
                        return fire
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        try:
            self.connection.close()
        except Exception:  # the broker may be gone already (restart tests)
            pass


def slot_time(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso)


def contiguous_seconds(slots: list[str]) -> list[str]:
    """The whole seconds missing between the first and the last of `slots`."""
    times = sorted({slot_time(s) for s in slots})
    missing = []
    for a, b in zip(times, times[1:]):
        t = a + dt.timedelta(seconds=1)
        while t < b:
            missing.append(t.isoformat())
            t += dt.timedelta(seconds=1)
    return missing


def beat_connection(rabbit, vhost: str, pid: int) -> str | None:
    """The broker's connection pid (for `rabbitmqctl close_connection`) of beat process `pid`."""
    out = rabbit.ctl("list_connections", "-p", vhost, "pid", "client_properties", "--quiet",
                     "--no-table-headers").stdout
    for line in out.splitlines():
        if f':{pid}"' in line and "utilitarian beat" in line:
            return line.split("\t", 1)[0]
    return None


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned) or the timeout passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_quiet(consumer: FireConsumer, quiet: float = 1.0, timeout: float = 15.0) -> None:
    """Wait until the consumer received nothing for `quiet` seconds (all committed fires drained)."""
    def settled():
        fires = consumer.snapshot()
        return not fires or time.monotonic() - fires[-1].at >= quiet
    assert wait_until(settled, timeout), "fires kept arriving"


def free_port_url() -> str:
    """A broker URL nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"
