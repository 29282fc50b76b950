"""Runs stepwise tasks (utilitarian/steps.py) for a child's TaskRunner: each step on a step thread,
each wait parked in the child's wait loop (waits.py), each resumption handed back to the step
threads as the Running itself (the runner's `_handle` tells it from a delivery). A task is one
delivery in flight from its first step until its generator returns or raises, and is settled then,
exactly as a task that ran in one go (runner.TaskRunner._end).

Time limits: a step on a thread gets the soft limit as an async exception like any task (guarded by
its thread's shield guard); a parked task gets it thrown in as it resumes, which the limit makes
happen now (its wait is cancelled). At the hard limit a running step is abandoned as any task (the
child retires); a parked task is closed (its finally blocks run, its connection closes) and settled
by policy, and the child lives on. Parking, the parked state in the rules and the `settled` mark
change under the runner's lock, so the settler's decision and the task's state agree."""

from __future__ import annotations

import logging

from utilitarian import shield
from utilitarian.broker.consumer import Delivery
from utilitarian.supervisor.threads import TaskThreads
from utilitarian.supervisor.waits import WaitLoop
from utilitarian.tasks import SoftTimeLimitExceeded


class HardTimeLimitExceeded(Exception):
    """The task ran past its hard limit: abandoned on its thread (the child is replaced), or
    closed while it waited on none."""

log = logging.getLogger(__name__)


# Threads that run the steps, a stepwise delivery's first one too (the runner submits it here). Few:
# a step is CPU work of a fraction of a millisecond, so more threads than CPUs only take turns at
# the GIL, each turn a wake-up and a context switch (docs/benchmarks-amr.md, issue 16). A first step
# may block (a stalled database in its job lookup): first steps run on all but one of them at once,
# so the resumed steps of sessions under way never wait behind new ones. One stuck past its hard
# limit is written off (the runner settles it; a thread may start in its place).
STEP_THREADS = 2


class Stepping:
    def __init__(self, runner, *, threads: int = STEP_THREADS):
        self.runner = runner  # the TaskRunner: its lock, rules, settle path and `_handle`
        self.waits = WaitLoop(self._resume, clock=runner.clock, name="waits")
        self.threads = TaskThreads(runner._handle, threads, name="step",
                                   limited=lambda item: type(item) is Delivery, limit=threads - 1)

    def start(self) -> None:
        self.waits.start()

    def stop(self) -> None:
        self.waits.stop()
        self.threads.shutdown()

    def _resume(self, r, value: bool) -> None:
        """From the wait loop (or the outbox's flusher): the wait ended; the next step goes to the
        step threads, ahead of deliveries not started yet (what is under way finishes first: its
        connection, and a gateway it may hold, are released sooner)."""
        r.wake = value
        self.threads.submit(r, first=True)

    # --- step threads ------------------------------------------------------------------------
    def step(self, r) -> bool:
        """Run `r`'s steps on this thread until it parks (True) or has ended and been settled
        (False: the caller counts it finished)."""
        runner = self.runner
        lock = runner._lock
        value, r.wake = r.wake, None
        label = r.label
        guarded = r.soft
        while True:
            with lock:
                closed = r.settled  # closed at its hard limit while its resumption was on the way
                if not closed:
                    throw, r.throw = r.throw, None
                    runner.rules.on_resumed(r)
                    if guarded:  # without a soft limit nothing is ever injected: no guard to keep
                        r.guard = shield.guard()
                        r.guard.begin(r)  # from here the settler may raise the soft limit in this step
                    r.stepping = True
            if closed:
                self.close(r)
                return False
            runner.task_local.task = label
            wait = error = None
            ended = False
            try:
                try:
                    wait = r.steps.throw(throw) if throw is not None else r.steps.send(value)
                finally:
                    taken = r.guard.end() if guarded else None  # first: no lock may be taken with one pending
            except StopIteration:  # returned: its value is not kept (as for any task)
                ended = True
            except BaseException as exc:  # SystemExit too: the task's failure is data for its retry policy
                error = exc
                ended = r.steps.gi_frame is None  # else it surfaced here, after the step: the task gets it
            runner.task_local.task = None
            if ended:
                with lock:
                    r.stepping = False
                runner._end(r, error)
                return False
            parked = None  # True, or the wait to arm: parked
            with lock:
                r.stepping = False
                if r.settled:  # abandoned at its hard limit during this step: the child retires
                    late = True
                else:
                    late = False
                    if error is not None:
                        r.throw = error
                    elif taken is not None and r.throw is None:
                        r.throw = taken()
                    value = None
                    if r.throw is None:
                        try:
                            value = self.waits.enter(r, wait)
                        except TypeError as exc:  # it yielded something that is not a wait
                            r.throw = exc
                        else:
                            if type(value) is not bool:  # parked: None, or an entry to arm
                                runner.rules.on_parked(r)
                                parked = True if value is None else value
            if parked is not None:
                # Out of the lock: the epoll_ctl (and a wake-up of the loop) release the GIL. The
                # loop arms the socket only while the wait goes on (a resumption or a cancel that
                # came first may have closed it).
                if parked is not True:
                    self.waits.arm(parked)
                return True
            if late:
                with lock:
                    runner.abandoned -= 1  # counted as finished by the caller now
                self.close(r)
                return False

    def close(self, r) -> None:
        """End a generator that will not run on: its finally blocks run here."""
        try:
            r.steps.close()
        except BaseException:  # a task that will not close only loses its cleanup
            log.warning("task %s[%s] did not close cleanly", r.message.task, r.message.id, exc_info=True)

    def drop(self, r) -> bool:
        """After an internal error in a step: end the task unsettled; True when the caller must
        requeue its delivery (False: the settler settled it at its hard limit already)."""
        with self.runner._lock:
            self.runner.rules.on_finished(r)
            late, r.settled = r.settled, True
        self.waits.cancel(r)
        self.close(r)
        return not late

    # --- settler thread ----------------------------------------------------------------------
    def close_at_hard_limit(self, r, limit: float, now: float) -> None:
        """A parked task passed its hard limit (the runner marked it settled and held, under the
        lock its parked state is decided under): close it and settle it by policy; the child stays."""
        runner = self.runner
        log.error("task %s[%s] exceeded its hard time limit (%.1fs) while waiting; closing it and settling "
                  "it by its retry policy", r.message.task, r.message.id, limit)
        if self.waits.cancel(r):
            self.close(r)
            with runner._lock:
                runner.finished += 1
        # else its resumption is on the way: that step closes it and is counted finished
        try:
            runner._fail(r.delivery, r.message, r.spec, HardTimeLimitExceeded(
                f"hard time limit of {limit:.1f}s exceeded"), now - r.started, reason="hard_time_limit")
        finally:
            with runner._lock:
                runner.held -= 1

    def soft_limit(self, r) -> str:
        """Under the runner's lock: the soft limit for a stepwise task. Raised in its step if one
        runs ("raised", "deferred"), else thrown in as it resumes ("resume": call `wake_now`)."""
        if r.settled:
            return "gone"
        if r.stepping:
            outcome = r.guard.raise_in(r, SoftTimeLimitExceeded)
            if outcome != "gone":
                return outcome
        if r.throw is None:
            r.throw = SoftTimeLimitExceeded("soft time limit exceeded")
        return "resume"

    def wake_now(self, r) -> None:
        """Out of the lock: cut a parked task's wait short so its pending exception reaches it."""
        if self.waits.cancel(r):
            self._resume(r, False)

