"""The AMR pipeline under test: a config on the per-test vhost with a fresh SQLite file or PostgreSQL
database, the store, a producer App, TaskContexts for calling tasks directly, draining queues with
pika, and worker/beat processes that are always cleaned up."""

from __future__ import annotations

import json
import os
import pathlib
import time
import uuid

import pika
import pytest

from support.procs import Proc, wait_for
from utilitarian.app import App
from utilitarian.broker.topology import declare_topology
from utilitarian.config import load_config
from utilitarian.protocol import TaskMessage, decode
from utilitarian.tasks import Registry, TaskContext

PG_ADMIN = os.environ.get("UTILITARIAN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_unavailable(reason: str):
    message = f"no PostgreSQL for the AMR store tests ({reason}); set UTILITARIAN_TEST_PG_URL"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def create_pg_database() -> tuple[str, str]:
    """A new database on the test server: (url, name). Skips (fails in CI) when none answers."""
    try:
        import psycopg
    except ImportError:
        _pg_unavailable("psycopg not installed")
    name = f"amr_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).strip().splitlines()[0])
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drain(broker_url: str, queue: str, *, expect: int | None = None, timeout: float = 10.0,
          settle: float = 0.0) -> list[TaskMessage]:
    """Take task messages off `queue` (acked): `expect` of them, or whatever is there."""
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = conn.channel()
        out: list[TaskMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is not None:
                out.append(decode(body, content_type=props.content_type, content_encoding=props.content_encoding,
                                  headers=props.headers))
                continue
            if expect is None or len(out) >= expect or time.monotonic() > deadline:
                return out
            time.sleep(0.02)
    finally:
        conn.close()


def raw_messages(broker_url: str, queue: str, *, expect: int, timeout: float = 10.0) -> list[tuple]:
    """(routing key, properties, body) of plain messages (not tasks), e.g. published readings."""
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = conn.channel()
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.02)
                continue
            out.append((method.routing_key, props, body))
        return out
    finally:
        conn.close()


def render_meter_list(entries: list[dict]) -> str:
    """`[[meters]]` tables (the format `utilitarian simulate --meters-out` writes)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    return "".join("\n[[meters]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in e.items() if v is not None)
                   for e in entries)


class AmrKit:
    """One test's AMR installation: config file, migrated store, producer App, processes."""

    def __init__(self, tmp_path: pathlib.Path, broker_url: str, settings, db_url: str | None = None):
        self.tmp = tmp_path
        self.broker_url = broker_url
        self.settings = settings
        self.db_url = db_url or f"sqlite:///{tmp_path / 'state' / 'amr.sqlite3'}"
        self.config_path = tmp_path / "utilitarian.toml"
        self.procs: list[Proc] = []
        self._app: App | None = None
        self._store = None
        self.configure("")
        declare_topology(settings)
        from utilitarian.amr.store import open_store

        with open_store(self.db_url) as store:
            store.migrate()

    def configure(self, extra: str, *, schedules: str = "") -> pathlib.Path:
        self.config_path.write_text(
            f'[broker]\nurl = "{self.broker_url}"\nretry_backoff_max = 1.0\n\n'
            f'[database]\nurl = "{self.db_url}"\n\n'
            f'[paths]\nstate_dir = "{self.tmp / "state"}"\nruntime_dir = "{self.tmp / "run"}"\n\n'
            f'[beat]\nbuiltin_schedules = false\n\n{schedules}\n{extra}\n')
        if self._app is not None:
            self._app.close()
            self._app = None
        return self.config_path

    @property
    def config(self):
        return load_config(str(self.config_path))

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(self.config, registry=Registry.for_config(self.config), name="amr test")
        return self._app

    @property
    def store(self):
        from utilitarian.amr.store import store_for

        return store_for(self.app)

    def ctx(self, name: str, *, task_id: str | None = None, retries: int = 0, queue: str = "") -> TaskContext:
        return TaskContext(id=task_id or str(uuid.uuid4()), name=name, retries=retries, queue=queue, app=self.app,
                           headers={})

    def run(self, message: TaskMessage, queue: str = ""):
        """Execute one drained message here, as a worker would (bound tasks get a context)."""
        spec = self.app.registry.get(message.task)
        if spec.bind:
            ctx = self.ctx(message.task, task_id=message.id, retries=message.retries, queue=queue)
            return spec.func(ctx, *message.args, **message.kwargs)
        return spec.func(*message.args, **message.kwargs)

    def import_meters(self, entries: list[dict], *, tasks=(), group: str | None = None) -> None:
        """Write `entries` (simulator rows) as a TOML meter list and import it as the CLI would,
        tasks (AmrTask) added first; with `group`, the tasks and every meter join that group."""
        from utilitarian.amr.registry_import import Known, known_execution_types, load_meter_list
        from utilitarian.amr.tasks.common import meter_types_of

        path = self.tmp / f"meters-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(render_meter_list(entries))
        for task in tasks:
            self.store.add_amr_task(task)
        known = Known(amr_tasks=frozenset(t.name for t in self.store.list_amr_tasks()),
                      meter_types=meter_types_of(self.app), execution_types=known_execution_types())
        meter_list = load_meter_list(str(path), known)
        self.store.import_registry(meter_list.entries)
        if group:
            for task in tasks:
                self.store.attach_task(task.name, group=group, meters=[e["name"] for e in entries])

    def drain(self, queue: str, **kwargs) -> list[TaskMessage]:
        return drain(self.broker_url, queue, **kwargs)

    def cli(self, *args: str, name: str = "cli", timeout: float = 60.0) -> tuple[int, str]:
        proc = self.process(*args, name=name)
        code = proc.wait(timeout)
        return code, proc.output()

    def process(self, *args: str, name: str = "proc", env: dict | None = None) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        head, rest = (args[0], args[1:]) if args else ("", ())
        proc = Proc([*head.split(), "--config", str(self.config_path), *rest], log=log, env=env)
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, env: dict | None = None) -> Proc:
        return self.process("worker", *args, name="worker", env=env)

    def beat(self) -> Proc:
        return self.process("beat", name="beat")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_tree()
        if self._app is not None:
            self._app.close()


__all__ = ["AmrKit", "create_pg_database", "drop_pg_database", "drain", "raw_messages", "wait_for"]
