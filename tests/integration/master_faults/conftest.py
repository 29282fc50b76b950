"""Fixtures for the master fault suite: a worker on a per-test vhost, its status over the control
socket (`utilitarian status --json`, the operator's view), and clean-up of everything started."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from support.procs import Proc, write_config
from utilitarian.app import App
from utilitarian.broker.topology import declare_topology
from utilitarian.config import load_config


class MasterKit:
    def __init__(self, tmp_path: pathlib.Path, broker_url: str, settings):
        self.tmp = tmp_path
        self.broker_url = broker_url
        self.settings = settings
        self.sink = tmp_path / "sink.txt"
        self.config_path = write_config(tmp_path / "utilitarian.toml", broker_url)
        self.procs: list[Proc] = []
        self._app: App | None = None
        declare_topology(settings)

    def configure(self, extra: str) -> pathlib.Path:
        return write_config(self.config_path, self.broker_url, extra)

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(load_config(str(self.config_path)), name="test producer")
        return self._app

    def worker(self, *args: str) -> Proc:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        proc = Proc(["worker", "--config", str(self.config_path), "-I", "support.worker_tasks",
                     "-I", "support.master_fault_tasks", *args], env={"UTIL_TEST_SINK": str(self.sink)}, log=log)
        self.procs.append(proc)
        return proc

    def run_dir(self) -> pathlib.Path:
        return self.tmp / "run"

    def status(self, timeout: float = 30.0, *, cli: bool = False) -> dict:
        """The worker's status document ({} when none answers): what `status --json` prints for it.
        Polling asks the control socket directly (a CLI process per poll is slow under load);
        `cli=True` goes through `utilitarian status --json` itself."""
        if not cli:
            from utilitarian.supervisor.control import discover, query

            for path in discover(str(self.run_dir())):
                try:
                    return query(path, timeout=timeout)
                except (OSError, ValueError):
                    return {}
            return {}
        proc = subprocess.run([sys.executable, "-m", "utilitarian", "status", "--json", "--no-queues",
                               "--config", str(self.config_path)], capture_output=True, text=True, timeout=timeout)
        assert proc.returncode in (0, 3), proc.stderr
        workers = json.loads(proc.stdout)["workers"]
        return workers[0] if workers else {}

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_tree()
        if self._app is not None:
            self._app.close()


@pytest.fixture
def kit(tmp_path, broker_url, broker_settings):
    k = MasterKit(tmp_path, broker_url, broker_settings)
    yield k
    k.close()
