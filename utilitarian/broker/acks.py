"""The settle path's rules, pure: which settles of a batch still apply (a settle for a delivery of
a dead channel is dropped by generation: the broker redelivers that message anyway, and its tag
means something else, or nothing, on a new channel), and which `basic_ack` frames carry the acks.
`multiple=True` acknowledges every tag up to the one given, so it may only reach below the
oldest delivery still being worked on (acking that one too would lose it if its child died)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable

ACK, REQUEUE, DROP = "ack", "requeue", "drop"


@dataclass
class FlushPlan:
    acks: list[tuple[int, bool]] = field(default_factory=list)  # (delivery_tag, multiple)
    requeue: list[int] = field(default_factory=list)  # basic_nack(requeue=True)
    reject: list[int] = field(default_factory=list)  # basic_reject(requeue=False)
    settled: set[int] = field(default_factory=set)  # tags no longer outstanding
    dropped: int = 0  # settles of a dead channel


def plan_flush(batch: Iterable[tuple[int, int, str]], generation: int, channel_open: bool,
               outstanding: Iterable[int]) -> FlushPlan:
    """`batch`: (generation, delivery_tag, how) in arrival order; `outstanding`: tags of the live
    channel not settled before this batch."""
    plan = FlushPlan()
    ack_tags = []
    settled = plan.settled
    for gen, tag, how in batch:
        if gen != generation or not channel_open:
            plan.dropped += 1
            continue
        settled.add(tag)
        if how == ACK:
            ack_tags.append(tag)
        elif how == REQUEUE:
            plan.requeue.append(tag)
        else:
            plan.reject.append(tag)
    if ack_tags:
        plan.acks = ack_frames(ack_tags, set(outstanding) - settled)
    return plan


def ack_frames(acks: Iterable[int], outstanding: Iterable[int]) -> list[tuple[int, bool]]:
    """(delivery_tag, multiple) frames for `acks`, given the tags of the live channel still
    unsettled after this batch (`outstanding`). One `multiple` frame covers every ack below the
    oldest unsettled tag; acks above it go one by one."""
    acks = sorted(set(acks))
    if not acks:
        return []
    pending = set(outstanding)
    pending.difference_update(acks)
    if not pending:
        return [(acks[-1], True)]
    below = bisect.bisect_left(acks, min(pending))  # acks[:below] are older than every unsettled tag
    frames: list[tuple[int, bool]] = [(acks[below - 1], True)] if below else []
    frames.extend((tag, False) for tag in acks[below:])
    return frames
