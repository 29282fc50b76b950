"""Async exceptions delivered safely (utilitarian/shield.py), with real threads: only to the job
they are meant for, never inside a shielded section, and the store's write lock and transaction
are a shielded section. A negative control shows what an unguarded injection does to the store."""

from __future__ import annotations

import ctypes
import fcntl
import os
import random
import sys
import threading
import time

import pytest

from utilitarian import shield
from utilitarian.amr.store.backend import open_backend
from utilitarian.tasks import SoftTimeLimitExceeded


class Soft(Exception):
    pass


def run_in_thread(target):
    box = {}

    def body():
        box["guard"] = shield.guard()
        try:
            box["result"] = target(box)
        except BaseException as exc:  # the test inspects what reached the thread
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    return t, box


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_raised_in_the_job_it_is_meant_for():
    token = object()
    started = threading.Event()

    def job(box):
        box["guard"].begin(token)
        try:
            started.set()
            for _ in range(2000):  # bytecode keeps running: the exception surfaces here
                time.sleep(0.005)
        finally:
            box["guard"].end()

    t, box = run_in_thread(job)
    started.wait(5)
    assert box["guard"].raise_in(token, Soft) == "raised"
    t.join(10)
    assert isinstance(box.get("error"), Soft)
    assert type(box["error"]).__name__ == "Soft"  # the marked subclass keeps the name


def test_a_finished_or_other_job_is_never_hit():
    first, second = object(), object()
    phase = threading.Event()
    go_on = threading.Event()

    def job(box):
        g = box["guard"]
        g.begin(first)
        g.end()  # the first job is over ...
        g.begin(second)  # ... and the thread runs another one
        phase.set()
        go_on.wait(5)
        time.sleep(0.05)
        g.end()
        return "clean"

    t, box = run_in_thread(job)
    phase.wait(5)
    assert box["guard"].raise_in(first, Soft) == "gone"
    assert box["guard"].raise_in(None, Soft) == "gone"
    go_on.set()
    t.join(10)
    assert box.get("result") == "clean" and "error" not in box
    assert box["guard"].raise_in(second, Soft) == "gone"  # after end(): nothing arrives


def test_deferred_inside_a_shield_and_raised_when_the_outermost_one_is_left():
    token = object()
    inside = threading.Event()
    injected = threading.Event()
    trail = []

    def job(box):
        g = box["guard"]
        g.begin(token)
        try:
            with shield.shielded():
                with shield.shielded():
                    inside.set()
                    injected.wait(5)
                    for _ in range(50):  # bytecode runs: nothing may surface in here
                        time.sleep(0.001)
                    trail.append("inner done")
                trail.append("outer still shielded")
            trail.append("not reached")
        finally:
            g.end()

    t, box = run_in_thread(job)
    inside.wait(5)
    assert box["guard"].raise_in(token, Soft) == "deferred"
    injected.set()
    t.join(10)
    assert trail == ["inner done", "outer still shielded"]
    assert isinstance(box.get("error"), Soft)


def test_no_injection_ever_surfaces_inside_a_shield(monkeypatch):
    """Stress: an injector fires at random moments while a job enters and leaves shields (one job
    per iteration, as the runner runs tasks). Each injection surfaces once, never between entering
    and leaving a shield, and none after its job ended. (The take-back of one still pending at a
    shield's entry or a job's end is a safety net: on CPython 3.11 a pending exception surfaces at
    the next function entry, before the shield is up, so `takebacks` stays at zero here.)"""
    takebacks = {"shielded": 0, "end": 0}
    real_clear = shield._clear_async_exc

    def counting_clear(ident, _):
        takebacks[sys._getframe(2).f_code.co_name] += 1
        return real_clear(ident, None)

    monkeypatch.setattr(shield, "_clear_async_exc", counting_clear)
    stop = threading.Event()
    state = {"inside": False, "violations": 0, "surfaced": 0, "token": None, "iterations": 0}

    def job(box):
        g = box["guard"]
        while not stop.is_set():
            token = state["token"] = object()
            try:
                g.begin(token)
                try:
                    total = 0
                    for _ in range(3):
                        with shield.shielded():
                            state["inside"] = True
                            for i in range(20):
                                total += i
                            state["inside"] = False
                        for i in range(20):
                            total -= i
                finally:
                    g.end()
            except Soft:
                state["surfaced"] += 1
                if state["inside"]:
                    state["violations"] += 1
                state["inside"] = False
            state["iterations"] += 1

    t, box = run_in_thread(job)
    sent = 0
    deadline = time.monotonic() + 120
    while sent < 300 and time.monotonic() < deadline:
        time.sleep(random.uniform(0, 0.002))  # a random moment of the job
        token = state["token"]
        if token is None or box["guard"].raise_in(token, Soft) not in ("raised", "deferred"):
            continue
        sent += 1
        wait_until(lambda: state["surfaced"] + takebacks["end"] >= sent, timeout=5)
    stop.set()
    t.join(10)
    assert "error" not in box, box.get("error")
    assert sent == 300
    assert state["violations"] == 0
    assert state["surfaced"] + takebacks["end"] == sent
    assert state["surfaced"] > sent // 2  # most arrive in their job; the rest were still pending at its end


@pytest.fixture
def store(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path}/s.sqlite3", pool_size=2, timeout=10.0)
    with backend.transaction(write=True) as tx:
        tx.execute("CREATE TABLE t (x INTEGER)")
    yield backend, str(tmp_path / "s.sqlite3.write-lock")
    backend.close()


def flock_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def write_while_the_flock_is_held_elsewhere(store, inject):
    """A task thread blocks in the store's flock (another process holds it); the soft limit is
    injected then; the flock is released. Returns what reached the thread."""
    backend, lock_path = store
    holder = os.open(lock_path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    token = object()

    def job(box):
        box["guard"].begin(token)
        try:
            with backend.transaction(write=True) as tx:
                tx.execute("INSERT INTO t VALUES (1)")
        finally:
            box["guard"].end()

    t, box = run_in_thread(job)
    wait_until(lambda: backend._write_lock.locked())  # in _begin, waiting for the flock
    time.sleep(0.1)
    inject(box["guard"], token)
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    t.join(10)
    return box


def test_the_store_write_lock_and_transaction_are_immune(store):
    backend, lock_path = store
    outcomes = []
    box = write_while_the_flock_is_held_elsewhere(
        store, lambda g, token: outcomes.append(g.raise_in(token, SoftTimeLimitExceeded)))
    # Then the limit was deferred, and raised only once the transaction committed and let go
    assert outcomes == ["deferred"]
    assert isinstance(box.get("error"), SoftTimeLimitExceeded)
    assert flock_free(lock_path)
    assert not backend._write_lock.locked()
    with backend.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM t") == 1
    idle = list(backend._idle)
    assert idle and not any(conn.in_transaction for conn in idle)


def test_negative_control_an_unguarded_injection_leaves_the_flock_held(store):
    # What the runner did before: PyThreadState_SetAsyncExc straight into the thread. It
    # surfaces as soon as flock() returns, before the `try` that would release it.
    backend, lock_path = store

    def raw(g, token):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(g.ident), ctypes.py_object(SoftTimeLimitExceeded))

    box = write_while_the_flock_is_held_elsewhere(store, raw)
    assert isinstance(box.get("error"), SoftTimeLimitExceeded)
    assert not flock_free(lock_path)  # leaked: every writer of every process now waits forever
