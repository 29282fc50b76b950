"""The Batcher (group commit, commit outbox): an item whose caller timed out while it was still
queued is never handled later; one whose group had started gives its caller the group's outcome."""

from __future__ import annotations

import threading
import time

import pytest

from utilitarian.batching import Batcher


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
