"""The per-process handle producers use: config, task routing and a confirmed publisher.
`send_task` publishes exactly what Celery's `send_task` would, delayed ones via delay levels."""

from __future__ import annotations

import datetime as dt
import os
import threading
from typing import Any, Iterable, Mapping

from utilitarian import queues
from utilitarian.broker import delay
from utilitarian.broker.publisher import ConfirmedPublisher, Outgoing
from utilitarian.protocol import Envelope, encode_task
from utilitarian.tasks import Registry, TaskCall

__all__ = ["App", "TaskCall", "default_app", "outgoing_for", "send_task"]  # TaskCall lives in utilitarian.tasks

UTC = dt.timezone.utc


def outgoing_for(envelope: Envelope, queue: str, now: dt.datetime | None = None) -> Outgoing:
    """Where a task message goes: straight to its queue, or through the delay levels when its
    ETA is in the future (nobody holds it unacked while it waits)."""
    eta_text = envelope.properties["headers"].get("eta")
    if eta_text:
        eta = dt.datetime.fromisoformat(eta_text)
        wait = (eta - (now or dt.datetime.now(UTC))).total_seconds()
        if wait > 0:
            exchange, key = delay.route(queue, wait)
            return Outgoing(exchange, key, envelope.body, envelope.properties)
    return Outgoing("", queue, envelope.body, envelope.properties)


class App:
    def __init__(self, config, *, registry=None, settings=None, name: str = "utilitarian producer"):
        self.config = config
        self._registry = registry
        self._settings = settings
        self._publisher: ConfirmedPublisher | None = None
        self._lock = threading.Lock()
        self._resources: dict[str, Any] = {}
        self.name = name

    @property
    def settings(self):
        if self._settings is None:
            from utilitarian.broker.connection import settings_from_config

            self._settings = settings_from_config(self.config)
        return self._settings

    @property
    def registry(self):
        if self._registry is None:
            self._registry = Registry.for_config(self.config)
        return self._registry

    @property
    def publisher(self) -> ConfirmedPublisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = ConfirmedPublisher(self.settings, name=self.name)
            return self._publisher

    def route(self, name: str, queue: str | None = None) -> str:
        if queue:
            resolved = queues.resolve(queue)
            return resolved or queue
        return self.registry.route(name, self.config)

    def prepare(self, call: TaskCall, now: dt.datetime | None = None, *, parent_id: str | None = None,
                root_id: str | None = None, queue: str | None = None) -> tuple[Envelope, Outgoing]:
        """The message for one call. `parent_id`/`root_id`: the sending task's, for a call that names
        no parent; `queue`: the call's route when the caller resolved it already."""
        now = now or dt.datetime.now(UTC)
        if call.parent_id or not parent_id:
            parent_id, root_id = call.parent_id, call.root_id
        else:
            root_id = call.root_id or root_id or parent_id
        envelope = encode_task(
            call.name, call.args, call.kwargs, task_id=call.task_id, eta=call.eta, countdown=call.countdown,
            expires=call.expires, retries=call.retries, time_limit=call.time_limit,
            soft_time_limit=call.soft_time_limit, parent_id=parent_id, root_id=root_id,
            extra_headers=call.extra_headers, now=now)
        return envelope, outgoing_for(envelope, queue or self.route(call.name, call.queue), now)

    def send_tasks(self, calls: Iterable[TaskCall], *, timeout: float | None = None, parent_id: str | None = None,
                   root_id: str | None = None) -> list[str]:
        """Publish many tasks with pipelined confirms; returns their ids in order. `parent_id` and
        `root_id` are set on the calls that name no parent of their own (a task's follow-ups)."""
        now = dt.datetime.now(UTC)
        ids: list[str] = []
        routes: dict[tuple, str] = {}  # a fan-out sends one task name to one queue, thousands of times

        def outgoing():
            for call in calls:
                where = (call.name, call.queue)
                queue = routes.get(where)
                if queue is None:
                    queue = routes[where] = self.route(call.name, call.queue)
                envelope, out = self.prepare(call, now, parent_id=parent_id, root_id=root_id, queue=queue)
                ids.append(envelope.task_id)
                yield out

        self.publisher.publish_many(outgoing(), timeout=timeout)
        return ids

    def send_task(self, name: str, args: tuple | list = (), kwargs: Mapping | None = None, **options) -> str:
        return self.send_tasks([TaskCall(name, args, kwargs, **options)])[0]

    def resource(self, name: str, factory):
        """A per-process object built once on first use (a database store, an HTTP session):
        `factory(app)` runs in the process that uses it, never before a fork."""
        found = self._resources.get(name)
        if found is not None:  # every poll asks several times: no shared lock once it exists
            return found
        with self._lock:
            if name not in self._resources:
                self._resources[name] = factory(self)
            return self._resources[name]

    def close(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
            resources, self._resources = self._resources, {}
        if publisher is not None:
            publisher.close()
        for value in resources.values():
            close = getattr(value, "close", None)
            if callable(close):
                close()


_default: tuple[int, App] | None = None
_default_lock = threading.Lock()


def default_app() -> App:
    """An App from the discovered config, one per process (rebuilt after fork)."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            from utilitarian.config import load_config

            _default = (os.getpid(), App(load_config()))
        return _default[1]


def send_task(name: str, args: tuple | list = (), kwargs: Mapping | None = None, **options) -> str:
    """Publish one task (Celery's `send_task` with our delivery semantics); returns its id."""
    return default_app().send_task(name, args, kwargs, **options)
