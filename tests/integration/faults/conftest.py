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

from support.broker_admin import VhostPool
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
        self.pool: VhostPool | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._boot, name="private rabbit boot", daemon=True)
        self.thread.start()

    def _boot(self):
        try:
            node = PrivateNode()
            node.start()
            self.pool = VhostPool(node, 2)
            self.node = node
        except BaseException as exc:  # reported to the test that needs the node
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


@pytest.fixture(scope="session")
def private_boot():
    if not shutil.which("rabbitmq-server"):
        message = "the fault suite needs the rabbitmq-server binary for a private node"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    boot = _NodeBoot()
    yield boot
    boot.done.wait(180)
    if boot.node is not None:
        boot.node.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_private_node_early(request):
    # Boot the private node at once: the shared-broker cases run meanwhile.
    here = str(pathlib.Path(__file__).parent)
    if any(name.startswith("private") for item in request.session.items if str(item.fspath).startswith(here)
           for name in getattr(item, "fixturenames", ())):
        request.getfixturevalue("private_boot")


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

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_tree()
        if self._app is not None:
            try:
                self._app.close()
            except Exception:  # a producer of a broker the test stopped
                pass


@pytest.fixture(scope="session")
def shared_pool(rabbit, request):
    if not rabbit.has_ctl:
        pytest.fail("the fault suite needs rabbitmqctl for the test broker", pytrace=False)
    here = str(pathlib.Path(__file__).parent)
    wanted = sum(1 for item in request.session.items if str(item.fspath).startswith(here)
                 and "kit" in getattr(item, "fixturenames", ()))
    pool = VhostPool(rabbit, max(1, wanted))
    yield pool
    pool.close()


@pytest.fixture
def kit(tmp_path, rabbit, shared_pool, request):
    k = FaultKit(tmp_path, rabbit, shared_pool.take(), request.node.name)
    yield k
    k.close()


@pytest.fixture
def private_kit(tmp_path, private_boot, request):
    node = private_boot.get()
    k = FaultKit(tmp_path, node, private_boot.pool.take(), request.node.name)
    yield k
    k.close()
