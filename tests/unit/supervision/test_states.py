"""Child states and the exit-code contract, row by row: every transition is allowed or refused
as the table says, and every kind of child exit gets its verdict (stop with 78, crash, planned,
heartbeat, nothing during a stop)."""

from __future__ import annotations

import itertools
import signal

import pytest

from utilitarian.errors import EX_CONFIG, EX_SOFTWARE
from utilitarian.supervisor import exits
from utilitarian.supervisor.records import ACTIVE, TRANSITIONS, ChildRecord, IllegalTransition, State

S = State
ALLOWED = {
    (S.STARTING, S.RUNNING), (S.STARTING, S.RETIRING), (S.STARTING, S.DRAINING), (S.STARTING, S.STOPPING),
    (S.STARTING, S.ABORTED),
    (S.RUNNING, S.RETIRING), (S.RUNNING, S.DRAINING), (S.RUNNING, S.STOPPING), (S.RUNNING, S.ABORTED),
    (S.RETIRING, S.DRAINING), (S.RETIRING, S.STOPPING), (S.RETIRING, S.ABORTED),
    (S.DRAINING, S.STOPPING), (S.DRAINING, S.ABORTED),
    (S.STOPPING, S.ABORTED),
}


def record(state: State) -> ChildRecord:
    rec = ChildRecord(cid=1, pool="main", index=0, generation=0, started=0.0, last_seen=0.0, boot_may_fail=True)
    rec.state = state
    return rec


@pytest.mark.parametrize("src,dst", [(a, b) for a, b in itertools.product(State, State) if a is not b])
def test_transitions(src, dst):
    rec = record(src)
    if (src, dst) in ALLOWED:
        rec.move(dst)
        assert rec.state is dst
    else:
        with pytest.raises(IllegalTransition):
            rec.move(dst)
        assert rec.state is src


def test_the_table_is_the_one_tested_and_only_starting_and_running_count_as_capacity():
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert ACTIVE == {S.STARTING, S.RUNNING}
    assert TRANSITIONS[S.ABORTED] == frozenset()  # only its exit ends it


KILL, ABRT, TERM = -signal.SIGKILL, -signal.SIGABRT, -signal.SIGTERM
# state, exit code, worker stopping, boot_failed reported, a child was ever ready -> outcome
EXITS = [
    # the contract: 78 stops the master only while no child was ever ready
    (S.STARTING, EX_CONFIG, False, True, False, exits.STOP_CONFIG),
    (S.STARTING, EX_CONFIG, False, False, False, exits.STOP_CONFIG),
    (S.STARTING, 1, False, True, False, exits.STOP_CONFIG),  # boot_failed reported, odd code
    (S.STARTING, EX_CONFIG, True, True, False, exits.STOP_CONFIG),  # even while stopping: a bad deploy
    (S.STARTING, EX_CONFIG, False, True, True, exits.CRASH),  # a sibling was ready: transient
    (S.RUNNING, EX_CONFIG, False, True, True, exits.CRASH),  # refused on a reconnect
    (S.RUNNING, EX_CONFIG, False, False, True, exits.CRASH),
    (S.DRAINING, EX_CONFIG, False, True, True, exits.PLANNED),
    # crashes
    (S.RUNNING, KILL, False, False, True, exits.CRASH),
    (S.STARTING, KILL, False, False, False, exits.CRASH),  # killed during boot: not a config error
    (S.RUNNING, -signal.SIGSEGV, False, False, True, exits.CRASH),
    (S.RUNNING, EX_SOFTWARE, False, False, True, exits.CRASH),
    (S.RUNNING, 0, False, False, True, exits.CRASH),  # left without being asked
    (S.RUNNING, None, False, False, True, exits.CRASH),  # fork failed
    (S.RETIRING, KILL, False, False, True, exits.CRASH),  # not yet told to go
    # planned departures
    (S.DRAINING, 0, False, False, True, exits.PLANNED),
    (S.DRAINING, TERM, False, False, True, exits.PLANNED),
    (S.DRAINING, EX_SOFTWARE, False, False, True, exits.PLANNED),
    # heartbeat murder
    (S.ABORTED, ABRT, False, False, True, exits.HEARTBEAT),
    (S.ABORTED, KILL, False, False, True, exits.HEARTBEAT),
    (S.ABORTED, KILL, True, False, True, exits.STOPPING),
    # the worker stops
    (S.STOPPING, 0, True, False, True, exits.STOPPING),
    (S.STOPPING, KILL, True, False, True, exits.STOPPING),
    (S.RUNNING, 0, True, False, True, exits.STOPPING),
]


@pytest.mark.parametrize("state,code,stopping,boot_failed,ever_ready,outcome", EXITS)
def test_exit_verdicts(state, code, stopping, boot_failed, ever_ready, outcome):
    verdict = exits.judge_exit(1234, code, state=state, stopping=stopping, boot_failed=boot_failed,
                               ever_ready=ever_ready)
    assert verdict.outcome == outcome
    assert "1234" in verdict.message


def test_an_unknown_signal_number_is_named_by_its_number():
    assert exits.signal_name(250) == "250"
    assert exits.signal_name(signal.SIGKILL) == "SIGKILL"
