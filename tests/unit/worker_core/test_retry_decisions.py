"""The retry decisions a failed task gets (tasks.RetryPolicy.decide), table by table, with an
injected random source: what is retried, after how long, and what is dead-lettered with which
reason. The runner settles by these (runner._fail), BaseExceptions included."""

from __future__ import annotations

import random

import pytest

from utilitarian.tasks import Reject, Retry, RetryPolicy, SoftTimeLimitExceeded


class MeterTimeout(Exception):
    pass


POLICY = RetryPolicy(max_retries=3, backoff=2.0, backoff_max=10.0, jitter=False)


@pytest.mark.parametrize("exc, retries, action, delay, reason", [
    (ValueError("x"), 0, "retry", 2.0, ""),
    (ValueError("x"), 1, "retry", 4.0, ""),
    (ValueError("x"), 2, "retry", 8.0, ""),
    (ValueError("x"), 3, "dead_letter", 0.0, "failed after 4 attempts"),
    (Retry("again", countdown=0.5), 0, "retry", 0.5, ""),  # the task's own countdown wins
    (Retry("again", countdown=-3), 1, "retry", 0.0, ""),
    (Retry("again"), 2, "retry", 8.0, ""),
    (Retry("again"), 3, "dead_letter", 0.0, "failed after 4 attempts"),  # explicit retries are bounded too
    (Reject("never"), 0, "dead_letter", 0.0, "rejected"),
    (SoftTimeLimitExceeded(), 0, "retry", 2.0, ""),  # an Exception like any other
    (SystemExit(3), 0, "dead_letter", 0.0, "not retryable"),  # BaseException: not in retry_for
    (KeyboardInterrupt(), 0, "dead_letter", 0.0, "not retryable"),
])
def test_default_policy(exc, retries, action, delay, reason):
    d = POLICY.decide(exc, retries)
    assert (d.action, d.delay, d.reason) == (action, pytest.approx(delay), reason)


def test_backoff_is_capped():
    assert [POLICY.delay_for(n) for n in range(6)] == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_only_listed_errors_are_retried():
    policy = RetryPolicy(max_retries=2, retry_for=(MeterTimeout,), jitter=False)
    assert policy.decide(MeterTimeout(), 0).action == "retry"
    assert policy.decide(ValueError(), 0).reason == "not retryable"
    assert policy.decide(Retry(), 0).action == "retry"  # asked for explicitly


@pytest.mark.parametrize("retries", range(6))
def test_jitter_keeps_at_least_half_the_delay(retries):
    policy = RetryPolicy(max_retries=10, backoff=2.0, backoff_max=10.0, jitter=True)
    full = min(10.0, 2.0 * 2 ** retries)
    for seed in range(50):
        delay = policy.decide(ValueError(), retries, rng=random.Random(seed)).delay
        assert full / 2 <= delay <= full

