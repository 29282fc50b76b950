"""The task runner with a fake consumer and publisher (the broker path itself is covered by the
fault suite): BaseException settled by policy, soft limits reaching only their task's thread,
hard limits settled on the settler thread, poison counted before decoding, and failed
follow-up publishes requeued after a backoff instead of at once."""

from __future__ import annotations

import collections
import random
import threading
import time

import pika
import pytest

from utilitarian.broker import redeliver
from utilitarian.broker.consumer import ACK, REQUEUE, Delivery
from utilitarian.errors import PublishError
from utilitarian.protocol import encode_task
from utilitarian.supervisor.runner import TaskRunner
from utilitarian.supervisor.stats import TaskStats
from utilitarian.tasks import Registry, RetryPolicy, SoftTimeLimitExceeded, TaskSpec

QUEUE = "utilitarian.tasks.default"


class FakeConsumer:
    def __init__(self):
        self.settles: list[tuple[int, str, float]] = []
        self.lock = threading.Lock()

    def settle(self, delivery, how=ACK):
        with self.lock:
            self.settles.append((delivery.delivery_tag, how, time.monotonic()))

    def by_tag(self) -> dict[int, list[str]]:
        out = collections.defaultdict(list)
        with self.lock:
            for tag, how, _ in self.settles:
                out[tag].append(how)
        return out


class FakePublisher:
    def __init__(self):
        self.published = []
        self.fail = None  # an exception to raise instead

    def publish(self, outgoing):
        if self.fail is not None:
            raise self.fail
        self.published.append(outgoing)


class FakeApp:
    def __init__(self):
        self.publisher = FakePublisher()


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def make_runner(specs, *, threads=4, max_deliveries=3, hard=None):
    consumer, app = FakeConsumer(), FakeApp()
    runner = TaskRunner(registry=Registry(specs), app=app, consumer=consumer, threads=threads, stats=TaskStats(),
                        max_deliveries=max_deliveries, max_message_bytes=1 << 20, hard_time_limit=hard,
                        task_local=threading.local())
    runner.settler.interval = 0.01
    runner.start()
    return runner, consumer, app.publisher


_tags = iter(range(1, 10**9))


def delivery_of(name, args=(), *, redelivered=False, headers=None, body=None, **options) -> Delivery:
    env = encode_task(name, list(args), {}, **options)
    props = dict(env.properties)
    props["headers"] = {**props["headers"], **(headers or {})}
    return Delivery(QUEUE, next(_tags), redelivered, env.body if body is None else body,
                    pika.BasicProperties(**props), generation=1)



def settle_300_near_the_limit(runner, consumer, publisher, name, rng) -> None:
    """300 tasks of `name` taking 12-28 ms against a 20 ms soft limit: each settled exactly once,
    the ones that hit the limit dead-lettered for it and nothing else failed."""
    deliveries = [delivery_of(name, [rng.uniform(0.012, 0.028)]) for _ in range(300)]
    for d in deliveries:
        runner.submit(d)
    wait_until(lambda: len(consumer.by_tag()) == 300, timeout=60)
    wait_until(lambda: runner.in_flight() == 0)
    settles = consumer.by_tag()
    assert all(settles[d.delivery_tag] == [ACK] for d in deliveries)  # each exactly once
    soft = sum(1 for o in publisher.published if "SoftTimeLimitExceeded" in o.properties["headers"].get(
        redeliver.DEAD_ERROR, ""))
    assert soft == len(publisher.published) and soft > 0  # some hit their limit, nothing else failed
    assert runner.stats.total("done") + runner.stats.total("failed") == 300

def spec(name, func, **kw) -> TaskSpec:
    return TaskSpec(name, func, QUEUE, retry=kw.pop("retry", RetryPolicy(max_retries=0)), **kw)


class Boom(BaseException):
    pass


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), Boom("custom")])
def test_a_base_exception_is_settled_as_a_failure_by_policy(exc):
    def raises():
        raise exc

    runner, consumer, publisher = make_runner([spec("t.raise", raises, retry=RetryPolicy(max_retries=2))])
    try:
        d = delivery_of("t.raise")
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert consumer.by_tag()[d.delivery_tag] == [ACK]
        # Not an Exception: not retryable by the default policy, dead-lettered with the reason
        (out,) = publisher.published
        assert out.routing_key == "utilitarian.tasks.dead"
        assert out.properties["headers"][redeliver.DEAD_REASON] == "not retryable"
        assert out.properties["headers"][redeliver.DEAD_ERROR].startswith(type(exc).__name__)
        wait_until(lambda: runner.in_flight() == 0)
        assert runner.stats.total("failed") == 1
    finally:
        runner.shutdown()


def test_300_tasks_ending_around_their_soft_limit_each_settle_once_and_no_thread_dies():
    rng = random.Random(7)

    def near_the_limit(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # busy, so the exception can surface anywhere
            pass

    runner, consumer, publisher = make_runner([spec("t.near", near_the_limit, soft_time_limit=0.02)], threads=4)
    try:
        settle_300_near_the_limit(runner, consumer, publisher, "t.near", rng)
        # every pool thread survived (an exception in the pool's loop kills its thread)
        threads = list(runner.executor.threads)
        assert len(threads) == 4 and all(t.is_alive() for t in threads)
    finally:
        runner.shutdown()


def test_the_hard_limit_is_settled_on_the_settler_thread_hook_included():
    release = threading.Event()
    hook_threads = []
    hard_hits = []

    def stuck():
        release.wait(30)

    def slow_hook(ctx, exc, args, kwargs):
        hook_threads.append(threading.current_thread().name)
        time.sleep(0.3)  # like the AMR hook waiting on the commit outbox

    runner, consumer, publisher = make_runner([spec("t.stuck", stuck, time_limit=0.2, on_failure=slow_hook)])
    runner.on_hard_limit = hard_hits.append
    try:
        d = delivery_of("t.stuck")
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert hook_threads == ["settler"]
        assert len(hard_hits) == 1
        (out,) = publisher.published
        assert out.properties["headers"][redeliver.DEAD_REASON] == "hard_time_limit"
        wait_until(lambda: runner.in_flight() == 0)  # abandoned and settled
        release.set()  # the thread comes back late: no second settle
        wait_until(lambda: runner.finished == 1)
        assert consumer.by_tag()[d.delivery_tag] == [ACK] and runner.in_flight() == 0
    finally:
        release.set()
        runner.shutdown()


def test_a_soft_limit_reaches_the_task_and_it_may_clean_up():
    outcome = []

    def polite():
        try:
            for _ in range(1000):  # an async exception cannot interrupt one long C call, only bytecode
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            outcome.append("cleaned up")

    runner, consumer, publisher = make_runner([spec("t.polite", polite, soft_time_limit=0.1)])
    try:
        d = delivery_of("t.polite")
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert outcome == ["cleaned up"] and consumer.by_tag()[d.delivery_tag] == [ACK]
        assert not publisher.published
    finally:
        runner.shutdown()


def test_a_message_that_cannot_be_dead_lettered_is_requeued_after_a_backoff_not_at_once():
    runner, consumer, publisher = make_runner([])
    publisher.fail = PublishError("message returned unroutable: NO_ROUTE (dead-letter queue missing)")
    try:
        d = delivery_of("t.any", body=b"[[1], {\"unterminated")
        failed_at = time.monotonic()
        runner.submit(d)
        wait_until(lambda: runner.dead_letter_failures == 1)
        wait_until(lambda: runner.in_flight() == 1)  # held, not settled yet: a drain waits for it
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        (tag, how, at), = consumer.settles
        assert how == REQUEUE and at - failed_at >= 0.45  # first backoff: 0.5-1.0 s
        wait_until(lambda: runner.in_flight() == 0)
    finally:
        runner.shutdown()


def test_a_drain_requeues_held_deliveries_at_once():
    runner, consumer, publisher = make_runner([])
    publisher.fail = PublishError("refused")
    runner.rules.follow_up_backoff_first = 60.0
    try:
        d = delivery_of("t.any", body=b"not json")
        runner.submit(d)
        wait_until(lambda: runner.dead_letter_failures == 1)
        runner.drain()
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag) == [REQUEUE], timeout=5)
        wait_until(lambda: runner.in_flight() == 0)
    finally:
        runner.shutdown()


@pytest.mark.parametrize("redelivered, count, published_to, reason", [
    # counted before decoding: an undecodable body redelivered gets a counted copy, not a loop
    (True, None, "delay", None),
    (True, 2, "delay", None),
    # delivered more often than max_deliveries: poison, unread
    (True, 3, "utilitarian.tasks.dead", "poison"),
    # a first delivery is read, and refused for what it is
    (False, None, "utilitarian.tasks.dead", "undecodable_body"),
])
def test_deliveries_are_counted_before_the_body_is_read(redelivered, count, published_to, reason):
    runner, consumer, publisher = make_runner([], max_deliveries=3)
    try:
        headers = {redeliver.DELIVERIES: count} if count else {}
        d = delivery_of("t.any", body=b"[[1], {\"unterminated", redelivered=redelivered, headers=headers)
        runner.submit(d)
        wait_until(lambda: consumer.by_tag().get(d.delivery_tag))
        assert consumer.by_tag()[d.delivery_tag] == [ACK]
        (out,) = publisher.published
        headers = out.properties["headers"]
        if published_to == "delay":
            assert out.routing_key.endswith(QUEUE) and headers[redeliver.DELIVERIES] == (count or 1) + 1
        else:
            assert out.routing_key == published_to and headers[redeliver.DEAD_REASON] == reason
        assert out.body == d.body  # the original, untouched
    finally:
        runner.shutdown()
