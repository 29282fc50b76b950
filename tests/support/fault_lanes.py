"""Fault cases side by side: each case runs on its own vhost with its own worker processes, and
most of its time is spent waiting (for a broker to come back, a backoff, a drain), so the suite
runs them in lanes at once and takes about as long as its longest lane, not the sum of all.

A case is written as a test taking `kit` and decorated with `@fault_case()`; pytest collects it
as usual, and its test waits for the case's lane and re-raises what the case raised (an
assertion keeps its traceback, a skip stays a skip). Cases on the private node share one lane:
they stop that node or take its vhosts down."""

from __future__ import annotations

import concurrent.futures
import functools
import time

CASE_TIMEOUT = 420.0  # one case, queued and run; a hung case fails its test instead of the session


def fault_case(*, private: bool = False):
    def mark(body):
        @functools.wraps(body, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def test(fault_lanes):
            fault_lanes.result(body)

        del test.__wrapped__  # pytest would read the case's signature (kit) through it
        test.fault_case = body
        test.fault_private = private
        return test

    return mark


class FaultLanes:
    """Starts every selected case at once: `shared` lanes on the shared broker, one lane on the
    private node. `make_kit(body, private)` gives a case its kit; `close_kit(kit)` cleans up."""

    def __init__(self, cases, make_kit, close_kit, *, shared: int = 3):
        self.make_kit = make_kit
        self.close_kit = close_kit
        self.futures: dict = {}
        self.shared = concurrent.futures.ThreadPoolExecutor(shared, thread_name_prefix="fault lane")
        self.private = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="private lane")
        # Longest first within each lane kind: the slow cases start at once.
        for body, private in cases:
            pool = self.private if private else self.shared
            self.futures[body] = pool.submit(self._run, body, private)

    def _run(self, body, private: bool) -> float:
        started = time.monotonic()
        kit = self.make_kit(body, private)
        try:
            body(kit)
        except AssertionError as exc:
            # A case fails in a lane, often on a loaded CI machine: what the worker said and what
            # its master counted then is what tells a defect from a slow machine.
            explain = getattr(kit, "explain", None)
            if explain is None:
                raise
            raise AssertionError(f"{exc}\n{explain()}").with_traceback(exc.__traceback__) from None
        finally:
            self.close_kit(kit)
        return time.monotonic() - started

    def result(self, body) -> float:
        future = self.futures.get(body)
        assert future is not None, f"{body.__name__} was not started (is it decorated with @fault_case?)"
        return future.result(timeout=CASE_TIMEOUT)

    def close(self) -> None:
        for pool in (self.shared, self.private):
            pool.shutdown(wait=True, cancel_futures=True)
