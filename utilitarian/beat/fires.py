"""What a fire puts on the wire: a Celery v2 task message with a deterministic id (uuid5 of
entry name and UTC slot), the slot in a header (and a kwarg when the entry asks for it)."""

from __future__ import annotations

import datetime as dt
import uuid

from utilitarian.app import outgoing_for
from utilitarian.beat.schedule import Entry
from utilitarian.broker.publisher import Outgoing
from utilitarian.protocol import Envelope, encode_task

UTC = dt.timezone.utc
# Fixed forever: changing it would change every task id and defeat duplicate detection.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://utilitarian.io/beat/fire")
HEADER_SCHEDULE = "utilitarian_schedule"
HEADER_SLOT = "utilitarian_slot"
HEADER_LEADER = "utilitarian_leader"  # host:pid/term of the beat that fired (fail-over forensics)
HEADER_MANUAL = "utilitarian_manual"


def slot_iso(slot: dt.datetime) -> str:
    """`2024-03-31T01:00:00+00:00`: the slot in UTC, the form hashed into the task id."""
    return slot.astimezone(UTC).isoformat()


def task_id_for(name: str, slot: dt.datetime) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{name}|{slot_iso(slot)}"))


def envelope_for(entry: Entry, slot: dt.datetime, *, leader: str | None = None, task_id: str | None = None,
                 manual: bool = False) -> Envelope:
    """The task message of `entry` at `slot`; `task_id` overrides the deterministic id (a fire by
    hand must not collide with the scheduled one)."""
    iso = slot_iso(slot)
    kwargs = dict(entry.kwargs)
    if entry.slot_kwarg:
        kwargs[entry.slot_kwarg] = iso
    headers = {HEADER_SCHEDULE: entry.name, HEADER_SLOT: iso}
    if leader:
        headers[HEADER_LEADER] = leader
    if manual:
        headers[HEADER_MANUAL] = True
    expires = slot + dt.timedelta(seconds=entry.expires) if entry.expires is not None else None
    return encode_task(entry.task, list(entry.args), kwargs, task_id=task_id or task_id_for(entry.name, slot),
                       expires=expires, extra_headers=headers)


def outgoing_fire(entry: Entry, slot: dt.datetime, now: dt.datetime, *, leader: str | None = None) -> Outgoing:
    envelope = envelope_for(entry, slot, leader=leader)
    return outgoing_for(envelope, entry.queue, now)
