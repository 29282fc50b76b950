"""Fixtures for worker tests: a config on the per-test vhost, a sink file, worker processes that
are always cleaned up, and a producer App."""

from __future__ import annotations

import pathlib

import pytest

from support.procs import Proc, write_config
from utilitarian.app import App
from utilitarian.broker.topology import declare_topology
from utilitarian.config import load_config


class WorkerKit:
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

    def worker(self, *args: str, env: dict | None = None, name: str = "worker") -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        proc = Proc(["worker", "--config", str(self.config_path), "-I", "support.worker_tasks", *args],
                    env={"UTIL_TEST_SINK": str(self.sink), **(env or {})}, log=log)
        self.procs.append(proc)
        return proc

    def control_socket(self) -> pathlib.Path:
        return self.tmp / "run"

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_tree()
        if self._app is not None:
            self._app.close()


@pytest.fixture
def kit(tmp_path, broker_url, broker_settings):
    k = WorkerKit(tmp_path, broker_url, broker_settings)
    yield k
    k.close()
