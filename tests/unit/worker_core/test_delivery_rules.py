"""The child's delivery rules with an injected clock: poison counting before the body is read,
ETAs, which time limits a task gets, when soft and hard limits fire, and the capped backoff when
a follow-up publish (dead letter, retry) fails."""

from __future__ import annotations

import datetime as dt

import pytest

from utilitarian.broker import redeliver
from utilitarian.supervisor import delivery
from utilitarian.supervisor.delivery import COUNT, DECODE, POISON, Abandon, Close, DeliveryRules, SoftLimit

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Props:
    def __init__(self, headers=None):
        self.headers = headers


# redelivered flag, our count header -> deliveries (this one included) and the verdict for max 3
@pytest.mark.parametrize("redelivered, header, deliveries, verdict", [
    (False, None, 1, DECODE),
    (False, 2, 2, DECODE),  # a counted copy coming back: read and run it
    (True, None, 2, COUNT),
    (True, 2, 3, COUNT),
    (True, 3, 4, POISON),
    (True, 9, 10, POISON),
    (True, "junk", 2, COUNT),  # a header we did not write counts as none
])
def test_deliveries_are_counted_before_the_body_is_read(redelivered, header, deliveries, verdict):
    props = Props({redeliver.DELIVERIES: header} if header is not None else {})
    n = redeliver.deliveries_of(props, redelivered)
    assert n == deliveries
    assert delivery.on_delivery(redelivered, n, max_deliveries=3) == verdict


@pytest.mark.parametrize("eta, wait", [
    (None, 0.0),
    (T0 - dt.timedelta(seconds=5), 0.0),
    (T0 + dt.timedelta(seconds=0.04), 0.0),  # within the slack: run now
    (T0 + dt.timedelta(seconds=3), 3.0),
])
def test_eta(eta, wait):
    assert delivery.wait_for_eta(eta, T0) == pytest.approx(wait)


# (message soft, hard), (task soft, hard), pool default hard -> (soft, hard)
@pytest.mark.parametrize("message, task, default, expect", [
    ((None, None), (None, None), 1500.0, (None, 1500.0)),  # every task gets the default hard limit
    ((None, None), (None, 120.0), 1500.0, (None, 120.0)),
    ((None, 30.0), (None, 120.0), 1500.0, (None, 30.0)),  # the message's own (Celery timelimit) first
    ((10.0, None), (60.0, 120.0), 1500.0, (10.0, 120.0)),
    ((None, None), (60.0, None), 1500.0, (60.0, 1500.0)),
    ((None, None), (2000.0, None), 1500.0, (None, 1500.0)),  # a soft limit past the hard one never fires
    ((None, None), (None, None), None, (None, None)),
])
def test_time_limits(message, task, default, expect):
    assert delivery.time_limits(message, task, default) == expect


def test_soft_then_hard_limit_fire_once_each():
    rules = DeliveryRules()
    rules.on_started("a", 100.0, soft=2.0, hard=5.0)
    rules.on_started("b", 101.0, soft=None, hard=3.0)
    rules.on_started("c", 100.0, soft=None, hard=None)
    assert rules.next_deadline() == 102.0
    table = [
        (101.9, []),
        (102.0, [SoftLimit("a")]),
        (103.0, []),  # the soft limit of a fired already
        (104.0, [Abandon("b", 3.0)]),
        (104.5, []),
        (105.0, [Abandon("a", 5.0)]),
        (999.0, []),  # c has no limit; a and b were abandoned once
    ]
    for now, actions in table:
        assert rules.on_tick(now) == actions, now
    assert rules.next_deadline() is None


def test_a_finished_task_gets_no_limit():
    rules = DeliveryRules()
    rules.on_started("a", 0.0, soft=1.0, hard=2.0)
    rules.on_finished("a")
    assert rules.on_tick(10.0) == [] and rules.next_deadline() is None


def test_hard_and_soft_passed_together_abandon_only():
    rules = DeliveryRules()
    rules.on_started("a", 0.0, soft=1.0, hard=2.0)
    assert rules.on_tick(3.0) == [Abandon("a", 2.0)]
    assert rules.on_tick(4.0) == []


def test_a_parked_stepwise_task_is_closed_at_its_hard_limit_a_running_step_abandoned():
    # Given stepwise tasks: p parks and stays parked, r parks then runs a step again, s is parked
    # when its soft limit passes
    rules = DeliveryRules()
    for key in "prs":
        rules.on_started(key, 0.0, soft=1.0 if key == "s" else None, hard=2.0)
    rules.on_parked("p")
    rules.on_parked("r")
    rules.on_resumed("r")
    rules.on_parked("s")
    # Then: the soft limit is asked for whatever the task's state (the runner throws it in as the
    # task resumes); at the hard limit only the task on a thread costs the child its thread
    assert rules.on_tick(1.0) == [SoftLimit("s")]
    assert rules.on_tick(2.0) == [Close("p", 2.0), Abandon("r", 2.0), Close("s", 2.0)]
    assert rules.on_tick(3.0) == [] and rules.next_deadline() is None
    # parking or resuming a finished task changes nothing
    rules.on_finished("p")
    rules.on_parked("p")
    rules.on_resumed("p")
    assert "p" not in rules.running


def test_failed_follow_ups_back_off_up_to_a_cap_and_report_once_per_interval():
    rules = DeliveryRules(follow_up_backoff_first=1.0, follow_up_backoff_cap=8.0, report_interval=10.0)
    decisions = []
    for t in range(12):
        decisions.append(rules.on_follow_up_failed(float(t), "a dead letter", "unroutable"))
        # the counted copy of the same message publishes fine in between: that says nothing
        # about dead letters, so it neither resets their backoff nor starts a new report
        assert rules.on_follow_up_published(t + 0.5, "a counted copy") is None
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8]
    assert all(c / 2 <= d.delay <= c for d, c in zip(decisions, ceilings))  # never requeued at once
    logged = [t for t, d in enumerate(decisions) if d.log]
    assert logged == [0, 10]  # the first failure, then once per 10 s
    assert "10 delivery(ies) requeued" in decisions[10].log
    assert rules.follow_up_failures == 12
    # a dead letter is published again: one line, its backoff starts over
    line = rules.on_follow_up_published(20.0, "a dead letter")
    assert line == "a dead letter was published again (12 follow-up publish(es) failed so far)"
    assert rules.on_follow_up_published(21.0, "a dead letter") is None
    again = rules.on_follow_up_failed(22.0, "a dead letter", "nacked")
    assert again.delay <= 1.0 and again.log is not None  # 12 s after the last report


def test_each_kind_of_follow_up_has_its_own_backoff():
    rules = DeliveryRules(follow_up_backoff_first=1.0, follow_up_backoff_cap=8.0)
    for t in range(3):
        rules.on_follow_up_failed(float(t), "a dead letter", "unroutable")
    assert rules.on_follow_up_failed(3.0, "a retry", "nacked").delay <= 1.0
    assert rules.on_follow_up_failed(4.0, "a dead letter", "unroutable").delay >= 4.0
