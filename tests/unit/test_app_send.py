"""What App.send_tasks hands the publisher: follow-ups of a task carry it as parent and its root,
calls that name their own parent keep it, and routes and ids are those of the calls."""

from __future__ import annotations

from utilitarian import queues
from utilitarian.app import App, TaskCall
from utilitarian.config import parse_config
from utilitarian.protocol import decode
from utilitarian.tasks import Registry, TaskContext


class RecordingPublisher:
    def __init__(self):
        self.sent = []

    def publish_many(self, items, *, timeout=None):
        self.sent.extend(items)


def app_with_recorder() -> tuple[App, RecordingPublisher]:
    app = App(parse_config({}), registry=Registry())
    recorder = app._publisher = RecordingPublisher()
    return app, recorder


def decoded(out):
    props = out.properties
    return decode(out.body, content_type=props["content_type"], content_encoding=props["content_encoding"],
                  headers=props["headers"])


def test_follow_ups_carry_the_sending_task_as_parent_and_its_root():
    app, recorder = app_with_recorder()
    ctx = TaskContext(id="t1", name="x.parent", retries=0, queue="", app=app, headers={"root_id": "r0"})
    ids = ctx.send_tasks([TaskCall("x.child", [1], task_id="c1"),
                          TaskCall("x.child", [2], task_id="c2", root_id="r9"),
                          TaskCall("x.child", [3], task_id="c3", parent_id="p2"),
                          TaskCall("x.other", [4], task_id="c4", queue="amr")])
    assert ids == ["c1", "c2", "c3", "c4"]
    messages = [decoded(out) for out in recorder.sent]
    assert [(m.id, m.parent_id, m.root_id) for m in messages] == [
        ("c1", "t1", "r0"), ("c2", "t1", "r9"), ("c3", "p2", "c3"), ("c4", "t1", "r0")]
    assert [out.routing_key for out in recorder.sent] == [queues.DEFAULT, queues.DEFAULT, queues.DEFAULT, queues.AMR]


def test_a_first_task_is_its_own_root_and_has_no_parent():
    app, recorder = app_with_recorder()
    ctx = TaskContext(id="t1", name="x.parent", retries=0, queue="", app=app)  # no root_id header
    ctx.send_tasks([TaskCall("x.child", task_id="c1")])
    app.send_tasks([TaskCall("x.child", task_id="c2")])
    first, second = (decoded(out) for out in recorder.sent)
    assert (first.parent_id, first.root_id) == ("t1", "t1")
    assert (second.parent_id, second.root_id) == (None, "c2")
