"""The settle path's rules, table by table: which frames ack a batch (`multiple=True` never covers
the oldest unfinished delivery), and which settles are dropped (a dead channel's generation)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from utilitarian.broker.acks import ACK, DROP, REQUEUE, ack_frames, plan_flush


@pytest.mark.parametrize("acks, outstanding, frames", [
    # nothing to ack
    ([], [], []),
    ([], [3, 4], []),
    # nothing else in flight: one multiple frame up to the newest ack
    ([1], [], [(1, True)]),
    ([1, 2, 3], [], [(3, True)]),
    ([3, 1, 2], [], [(3, True)]),  # order of arrival does not matter
    # the oldest unfinished delivery (2) stays unacked: 1 by multiple, 3 and 4 one by one
    ([1, 3, 4], [2], [(1, True), (3, False), (4, False)]),
    # everything acked is above the oldest unfinished one: no multiple at all
    ([5, 6], [4], [(5, False), (6, False)]),
    # below the oldest unfinished: one multiple frame covers them all
    ([1, 2, 3], [7, 9], [(3, True)]),
    # an ack for a tag still listed as outstanding is not "outstanding" for itself
    ([2], [2, 5], [(2, True)]),
    # duplicates in the batch collapse
    ([1, 1, 2], [], [(2, True)]),
])
def test_ack_frames(acks, outstanding, frames):
    assert ack_frames(acks, outstanding) == frames


def covered(frames) -> set[int]:
    """Tags the broker considers acked after these frames, given tags 1..20 unacked before."""
    acked: set[int] = set()
    for tag, multiple in frames:
        acked |= set(range(1, tag + 1)) if multiple else {tag}
    return acked


@pytest.mark.parametrize("acks, outstanding", [
    ([1, 3, 4], [2]), ([5, 6], [4]), ([1, 2, 8, 9], [3, 7]), ([10], [1]), ([1, 2], []),
])
def test_a_multiple_ack_never_covers_an_unfinished_delivery(acks, outstanding):
    # Given tags that were settled before (neither acked now nor outstanding) as already gone
    settled_before = set(range(1, 11)) - set(acks) - set(outstanding)
    frames = ack_frames(acks, outstanding)
    acked = covered(frames) - settled_before
    assert acked == set(acks)
    assert not acked & set(outstanding)


GEN = 3


@pytest.mark.parametrize("batch, channel_open, outstanding, expect", [
    # acks of the live channel
    ([(GEN, 1, ACK), (GEN, 2, ACK)], True, {1, 2, 3},
     {"acks": [(2, True)], "requeue": [], "reject": [], "settled": {1, 2}, "dropped": 0}),
    # a settle from an older channel is dropped: the broker redelivers that message anyway
    ([(GEN - 1, 1, ACK), (GEN, 5, ACK)], True, {5, 6},
     {"acks": [(5, True)], "requeue": [], "reject": [], "settled": {5}, "dropped": 1}),
    # the channel is closed: everything is dropped
    ([(GEN, 1, ACK), (GEN, 2, REQUEUE)], False, {1, 2},
     {"acks": [], "requeue": [], "reject": [], "settled": set(), "dropped": 2}),
    # requeue and drop are planned apart from acks; acks skip the still unfinished 4
    ([(GEN, 2, REQUEUE), (GEN, 3, DROP), (GEN, 1, ACK), (GEN, 5, ACK)], True, {1, 2, 3, 4, 5},
     {"acks": [(1, True), (5, False)], "requeue": [2], "reject": [3], "settled": {1, 2, 3, 5}, "dropped": 0}),
])
def test_plan_flush(batch, channel_open, outstanding, expect):
    plan = plan_flush(batch, GEN, channel_open, outstanding)
    assert {"acks": plan.acks, "requeue": plan.requeue, "reject": plan.reject, "settled": plan.settled,
            "dropped": plan.dropped} == expect


def reference_frames(acks, outstanding):
    """The rule written the slow, obvious way: the oldest tag still unsettled bounds `multiple`."""
    acks = sorted(set(acks))
    pending = [t for t in outstanding if t not in acks]
    oldest = min(pending) if pending else None
    below = [t for t in acks if oldest is None or t < oldest]
    return ([(below[-1], True)] if below else []) + [(t, False) for t in acks if oldest is not None and t > oldest]



@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=20), st.sets(st.integers(1, 40), max_size=20))
def test_ack_frames_match_the_obvious_rule_and_never_cover_an_unsettled_tag(acks, outstanding):
    frames = ack_frames(acks, outstanding)
    assert frames == reference_frames(acks, outstanding)
    unsettled = set(outstanding) - set(acks)
    for tag, multiple in frames:
        assert not multiple or all(t > tag for t in unsettled)
