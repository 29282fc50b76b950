"""Fixtures of the fault suite: real `utilitarian worker` processes on a per-test vhost of the
shared broker, or of a private RabbitMQ node where the broker must stop or a vhost go down; task
runs recorded in a sink file; per fault the figures (sent, ran, lost, duplicated), printed in
the terminal summary."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

from support.broker_admin import VhostSupply
from support.fault_lanes import FaultLanes
from support.procs import Proc, ran_counts, wait_for, write_config
from support.rabbit import PrivateNode
from utilitarian.app import App, TaskCall
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology, inspect_queues
from utilitarian.config import load_config

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FIGURES: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("fault suite figures")
    terminalreporter.write_line(f"{'fault':<44} {'sent':>6} {'ran':>6} {'lost':>5} {'dup':>5}  notes")
    for row in FIGURES:
        terminalreporter.write_line(f"{row['fault']:<44} {row['sent']:>6} {row['ran']:>6} {row['lost']:>5} "
                                    f"{row['duplicated']:>5}  {row.get('notes', '')}")


class _NodeBoot:
    """A private node booting in the background while the shared-broker cases run."""

    def __init__(self):
        self.node: PrivateNode | None = None
        self.pool: VhostSupply | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._boot, name="private rabbit boot", daemon=True)
        self.thread.start()

    def _boot(self):
        try:
            if not shutil.which("rabbitmq-server"):
                raise RuntimeError("no rabbitmq-server binary for a private node")
            node = PrivateNode()
            node.start()
            self.pool = VhostSupply(node, "fault", batch=2, create_now=True)
            self.node = node
        except BaseException as exc:  # reported to the case that needs the node
            self.error = exc
        finally:
            self.done.set()

    def get(self) -> PrivateNode:
        self.done.wait(180)
        if self.node is None or self.pool is None:
            message = f"private RabbitMQ node did not start: {self.error}"
            if IN_CI:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        return self.node

    def stop(self) -> None:
        self.done.wait(180)
        if self.node is not None:
            self.node.stop()


class FaultKit:
    """One fault case: a config on its vhost, worker processes, a producer, the sink of runs."""

    def __init__(self, tmp_path: pathlib.Path, rabbit, vhost: str, name: str):
        self.tmp = tmp_path
        self.rabbit = rabbit
        self.vhost = vhost
        self.name = name
        self.broker_url = rabbit.url_for(vhost)
        self.settings = settings_from_url(self.broker_url, confirm_timeout=15.0, connection_timeout=5.0)
        self.sink = tmp_path / "sink.txt"
        self.config_path = write_config(tmp_path / "utilitarian.toml", self.broker_url)
        self.procs: list[Proc] = []
        self._app: App | None = None
        declare_topology(self.settings)

    def configure(self, extra: str) -> None:
        write_config(self.config_path, self.broker_url, extra)

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(load_config(str(self.config_path)), name="fault producer")
        return self._app

    def send(self, name: str, args_list, **options) -> list[str]:
        return self.app.send_tasks([TaskCall(name, list(args), **options) for args in args_list])

    def worker(self, *args: str, env: dict | None = None) -> Proc:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        proc = Proc(["worker", "--config", str(self.config_path), "-I", "support.worker_tasks",
                     "-I", "support.fault_tasks", *args],
                    env={"UTIL_TEST_SINK": str(self.sink), **(env or {})}, log=log)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "utilitarian", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=60)

    def status(self) -> dict:
        proc = self.cli("status", "--json", "--no-queues")
        assert proc.returncode in (0, 3), proc.stderr
        workers = json.loads(proc.stdout)["workers"]
        return workers[0] if workers else {}

    def depth(self, *names: str) -> dict:
        return {s.name: s.messages for s in inspect_queues(self.settings, list(names))}

    def consumers(self, name: str) -> int | None:
        return inspect_queues(self.settings, [name])[0].consumers

    def wait_ready(self, children: int, timeout: float = 60) -> dict:
        def ready():
            doc = self.status()
            kids = [c for c in doc.get("children", []) if c["ready"] and c["state"] == "running"]
            return doc if len(kids) >= children else None

        return wait_for(ready, timeout=timeout, what=f"{children} ready children")

    def ran(self) -> collections.Counter:
        return ran_counts(self.sink)

    def figures(self, fault: str, ids, notes: str = "") -> dict:
        counts = self.ran()
        ids = list(ids)
        row = {"fault": fault, "sent": len(ids), "ran": sum(1 for i in ids if counts.get(i)),
               "lost": sum(1 for i in ids if not counts.get(i)),
               "duplicated": sum(1 for i in ids if counts.get(i, 0) > 1), "notes": notes}
        FIGURES.append(row)
        print(f"FAULT {fault}: sent={row['sent']} ran={row['ran']} lost={row['lost']} "
              f"duplicated={row['duplicated']} {notes}")
        return row

    def explain(self, tail: int = 6000) -> str:
        """The master's status and the end of each worker's log, for a failed case's message."""
        try:
            status = json.dumps(self.status(), default=str)
        except Exception as exc:  # a stopped master, a broken socket: say so, keep the logs
            status = f"(no status: {exc})"
        parts = [f"status: {status}"]
        for i, proc in enumerate(self.procs):
            parts.append(f"--- worker {i} (exit {proc.popen.poll()}), last {tail} characters of its log:\n"
                         f"{proc.output()[-tail:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_tree()
        if self._app is not None:
            try:
                self._app.close()
            except Exception:  # a producer of a broker the test stopped
                pass


def _selected_cases(session) -> list:
    here = str(pathlib.Path(__file__).parent)
    cases = []
    for item in session.items:
        body = getattr(getattr(item, "function", None), "fault_case", None)
        if body is not None and str(item.fspath).startswith(here):
            cases.append((body, item.function.fault_private))
    return cases


@pytest.fixture(scope="session")
def fault_lanes(request, rabbit, tmp_path_factory):
    """Every selected fault case, started at once in lanes (see support/fault_lanes.py)."""
    if not rabbit.has_ctl:
        pytest.fail("the fault suite needs rabbitmqctl for the test broker", pytrace=False)
    cases = _selected_cases(request.session)
    private = _NodeBoot() if any(p for _, p in cases) else None
    shared_pool = VhostSupply(rabbit, "fault", batch=max(1, sum(1 for _, p in cases if not p)), create_now=True)
    dirs = {body: tmp_path_factory.mktemp(body.__name__[:40]) for body, _ in cases}  # here, not in the lanes

    def make_kit(body, is_private: bool) -> FaultKit:
        if is_private:
            node = private.get()
            return FaultKit(dirs[body], node, private.pool.take(), body.__name__)
        return FaultKit(dirs[body], rabbit, shared_pool.take(), body.__name__)

    lanes = FaultLanes(cases, make_kit, FaultKit.close)
    yield lanes
    lanes.close()
    shared_pool.close()
    if private is not None:
        private.stop()
