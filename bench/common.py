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


def wait_counter(path: pathlib.Path, n: int, timeout: float = 600.0, first: list | None = None,
                 cpu_of: int | None = None, cpu: list | None = None) -> float:
    """Monotonic time at which the counter reached n; `first` gets the time of the first byte. With
    `cpu_of` (a pid), `cpu` gets (tasks, CPU seconds) of that process tree from the first byte to
    the n-th: the worker's CPU per task, start-up excluded."""
    deadline = time.monotonic() + timeout
    began = None
    while True:
        size = counter_size(path)
        now = time.monotonic()
        if first is not None and not first and size > 0:
            first.append(now)
        if cpu_of is not None and began is None and size > 0:
            began = (size, tree_cpu(cpu_of))
        if size >= n:
            if cpu_of is not None and cpu is not None and began is not None:
                cpu.append((n - began[0], tree_cpu(cpu_of) - began[1]))
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


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def ctx_switches(tasks: str = "/proc/self/task/*/status") -> tuple[int, int]:
    """Voluntary and involuntary context switches so far of the threads whose status files match
    `tasks` (a glob: /proc/PID/status counts the main thread's only, /proc/PID/task/*/status every
    thread's). A thread that ends while this reads is skipped, and an ended thread's are gone."""
    voluntary = involuntary = 0
    for status in pathlib.Path("/").glob(tasks.lstrip("/")):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
        except OSError:
            continue
    return voluntary, involuntary


def fill_with_celery(url: str, name: str, n: int, args=(), queue: str = "utilitarian.tasks.default") -> None:
    """The queue filled by Celery's own producer (send_task, as the platform's API publishes)."""
    from celery import Celery

    app = Celery("bench-fill", broker=url)
    app.conf.task_serializer = "json"
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task(name, list(args), queue=queue, producer=producer)


def median(values) -> float:
    return statistics.median(values)


def tmpdir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="utilbench-"))
