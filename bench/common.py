"""Shared pieces of the benchmark scripts: a throw-away vhost, filling a queue, waiting on a
counter file, PSS of a process tree, and medians. Benchmarks print figures; they assert nothing."""

from __future__ import annotations

import contextlib
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
BROKER = os.environ.get("BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672")
sys.path.insert(0, str(REPO))


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def vhost(prefix: str = "bench"):
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ctl("add_vhost", name)
    ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)


def url_for(vhost_name: str) -> str:
    return f"{BROKER}/{vhost_name}"


def write_config(directory: pathlib.Path, url: str, extra: str = "") -> pathlib.Path:
    path = directory / "utilitarian.toml"
    path.write_text(f'[broker]\nurl = "{url}"\n[beat]\nbuiltin_schedules = false\n'
                    f'[paths]\nstate_dir = "{directory / "state"}"\nruntime_dir = "{directory / "run"}"\n'
                    f'[logging]\nlevel = "warning"\n{extra}\n')
    return path


def fill(config_path: pathlib.Path, name: str, n: int, args=(), queue: str = "default") -> None:
    from utilitarian.app import App, TaskCall
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.config import load_config

    config = load_config(str(config_path))
    declare_topology(settings_from_config(config))
    app = App(config)
    try:
        for start in range(0, n, 5000):
            app.send_tasks([TaskCall(name, list(args), queue=queue) for _ in range(min(5000, n - start))])
    finally:
        app.close()


def counter_size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_counter(path: pathlib.Path, n: int, timeout: float = 600.0, first: list | None = None) -> float:
    """Monotonic time at which the counter reached n; `first` gets the time of the first byte."""
    deadline = time.monotonic() + timeout
    while True:
        size = counter_size(path)
        now = time.monotonic()
        if first is not None and not first and size > 0:
            first.append(now)
        if size >= n:
            return now
        if now > deadline:
            raise RuntimeError(f"counter stuck at {size} of {n}")
        time.sleep(0.002)


def env_for(counter: pathlib.Path, url: str) -> dict:
    return {**os.environ, "BENCH_COUNTER": str(counter), "BENCH_BROKER_URL": url,
            "PYTHONPATH": f"{BENCH}{os.pathsep}{REPO}"}


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if hasattr(os, "killpg") else proc.kill()
            proc.wait()


def tree_memory(pid: int) -> tuple[float, float]:
    """(PSS MiB, RSS MiB) of a process and its descendants."""
    import psutil

    root = psutil.Process(pid)
    pss = rss = 0
    for p in [root] + root.children(recursive=True):
        try:
            full = p.memory_full_info()
            pss += full.pss
            rss += full.rss
        except psutil.Error:
            continue
    return pss / 2**20, rss / 2**20


def median(values) -> float:
    return statistics.median(values)


def tmpdir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="utilbench-"))
