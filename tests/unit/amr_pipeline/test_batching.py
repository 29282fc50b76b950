"""The Batcher (group commit, commit outbox): an item whose caller timed out while it was still
queued is never handled later; one whose group had started gives its caller the group's outcome."""

from __future__ import annotations

import threading
import time

import pytest

from utilitarian.batching import Batcher, gather_wait


class Late(Exception):
    pass


def test_an_item_that_timed_out_in_the_queue_is_never_handled_later():
    release, busy = threading.Event(), threading.Event()
    handled: list = []

    def handle(group):
        if "first" in group:
            busy.set()
            release.wait(10)  # the group ahead is slow (a busy write lock)
        handled.extend(group)
        return list(group)

    batcher = Batcher(handle, name="t", max_group=10, timeout=0.3, on_timeout=lambda: Late("timed out"))
    outcome: list = []

    def submit_first():
        try:
            outcome.append(batcher.submit("first"))
        except Late as exc:
            outcome.append(exc)

    try:
        first = threading.Thread(target=submit_first)
        first.start()
        assert busy.wait(5)  # the flusher is inside the group of "first"
        # When a second item waits behind it longer than the timeout
        with pytest.raises(Late):
            batcher.submit("second")
        # Then, once the slow group finished, the item the caller gave up on was not committed
        release.set()
        first.join(5)
        assert batcher.submit("third") == "third"
        assert handled == ["first", "third"]
        assert len(outcome) == 1  # "first" got an answer (its group had started: it waited for it)
    finally:
        release.set()
        batcher.close()


def test_an_item_whose_group_started_gets_that_groups_outcome():
    started = threading.Event()

    def handle(group):
        started.set()
        time.sleep(0.5)  # longer than the timeout, shorter than twice it
        return [f"done {item}" for item in group]

    batcher = Batcher(handle, name="t", max_group=10, timeout=0.35, on_timeout=lambda: Late("timed out"))
    try:
        # The caller does not get a timeout for work that is being committed right now
        assert batcher.submit("x") == "done x" and started.is_set()
    finally:
        batcher.close()


def test_gathering_waits_only_while_items_keep_coming():
    # After a lone item nothing is waited for (an idle process commits at once)
    assert gather_wait(1, 1, gather_to=32, most=0.004) == 0.0
    assert gather_wait(0, 1, gather_to=32, most=0.004) == 0.0
    # After a group of several, up to `most` for more
    assert gather_wait(5, 1, gather_to=32, most=0.004) == 0.004
    # Not when enough are queued already, nor when gathering is off
    assert gather_wait(5, 32, gather_to=32, most=0.004) == 0.0
    assert gather_wait(5, 1, gather_to=32, most=0.0) == 0.0


def test_a_gathering_batcher_handles_a_lone_item_at_once_and_groups_a_stream():
    groups: list = []
    gate, inside = threading.Event(), threading.Event()

    def handle(group):
        if "gate" in group:
            inside.set()
            gate.wait(10)
        groups.append(list(group))
        return list(group)

    # A wait far longer than the test: only the early wake-up (gather_to queued) can end it
    batcher = Batcher(handle, name="t", max_group=100, timeout=30, on_timeout=lambda: Late("timed out"),
                      gather=10.0, gather_to=8)
    threads: list = []

    def submit_all(items):
        for item in items:
            threads.append(threading.Thread(target=batcher.submit, args=(item,)))
            threads[-1].start()

    try:
        started = time.monotonic()
        assert batcher.submit("alone") == "alone"  # the first group is never held back
        # Given three items queued behind a slow lone one: they go as a group of three at once
        submit_all(["gate"])
        assert inside.wait(5)
        submit_all(["a", "b", "c"])
        time.sleep(0.2)  # a, b and c queued behind the gate
        gate.set()
        for t in threads:
            t.join(5)
        assert groups == [["alone"], ["gate"], ["a", "b", "c"]]
        # When the next eight come one by one after that group of several: they are gathered
        for i in range(8):
            submit_all([i])
            time.sleep(0.02)
        for t in threads:
            t.join(5)
        assert groups[3:] == [list(range(8))]
        assert time.monotonic() - started < 5.0  # the gathering ended once 8 were there, not after 10 s
    finally:
        gate.set()
        batcher.close()
