"""The beat's memory: per entry, the slot up to which everything is done and a fingerprint of the
cron that produced it, kept as one persistent JSON message in the durable queue
`utilitarian.beat.state` (x-max-length 1, drop-head) where any future leader on any host reads it.

With `[broker] queue_type = "quorum"` the state queue is a quorum queue too, so the state survives
the loss of a cluster node: quorum queues support the same x-max-length 1 with drop-head (RabbitMQ
3.10 checked: a requeued state is dropped in favour of a newer one published after it), and the
beat's transactions publish to them as to classic queues."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
STATE_QUEUE = "utilitarian.beat.state"
# Publishing a new state drops the old one at the head: the queue never holds more than one.
STATE_QUEUE_ARGUMENTS = {"x-max-length": 1, "x-overflow": "drop-head"}
FORMAT = 1


@dataclass(frozen=True)
class EntryState:
    """Every slot of the entry at or before `done_until` was fired or deliberately skipped."""

    done_until: dt.datetime
    fingerprint: str


@dataclass(frozen=True)
class BeatState:
    entries: Mapping[str, EntryState] = field(default_factory=dict)
    # Entries this beat could not parse are carried along untouched, so a beat with an older
    # or newer config (a rolling deploy) never erases another's memory.
    foreign: Mapping[str, Any] = field(default_factory=dict)
    writer: str | None = None
    written_at: dt.datetime | None = None


def encode_state(state: BeatState, *, writer: str, now: dt.datetime) -> bytes:
    doc = {
        "format": FORMAT,
        "writer": writer,
        "written_at": _iso(now),
        "entries": {**dict(state.foreign), **{
            name: {"done_until": _iso(e.done_until), "fingerprint": e.fingerprint}
            for name, e in sorted(state.entries.items())}},
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_state(body: bytes | None) -> BeatState:
    """The state in a message body; an unreadable body counts as no state (logged), which makes
    every entry start from now: nothing is replayed, at worst a slot is missed."""
    if not body:
        return BeatState()
    try:
        doc = json.loads(body.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
            raise ValueError(f"unknown state format {doc.get('format') if isinstance(doc, dict) else doc!r}")
    except (UnicodeDecodeError, ValueError) as exc:
        log.error("beat state message is unreadable (%s); every entry starts from now", exc)
        return BeatState()
    entries: dict[str, EntryState] = {}
    foreign: dict[str, Any] = {}
    for name, item in doc["entries"].items():
        try:
            entries[name] = EntryState(_parse(item["done_until"]), str(item["fingerprint"]))
        except (KeyError, TypeError, ValueError):
            log.warning("beat state of entry %r is unreadable; kept as is, the entry starts from now", name)
            foreign[name] = item
    return BeatState(entries=entries, foreign=foreign, writer=doc.get("writer"),
                     written_at=_parse_optional(doc.get("written_at")))


def state_queue_arguments(queue_type: str = "classic") -> dict:
    if queue_type == "quorum":
        return {**STATE_QUEUE_ARGUMENTS, "x-queue-type": "quorum"}
    return dict(STATE_QUEUE_ARGUMENTS)


def declare_state_queue(channel, queue_type: str = "classic") -> None:
    from utilitarian.broker.topology import declare_checked

    declare_checked(channel, STATE_QUEUE, queue_type, state_queue_arguments)


def read_state(channel) -> BeatState:
    """Read the state message and put it back (requeue), so it stays if this leader dies."""
    method, _props, body = channel.basic_get(STATE_QUEUE, auto_ack=False)
    if method is None:
        return BeatState()
    channel.basic_reject(method.delivery_tag, requeue=True)
    return decode_state(body)


def state_properties() -> dict:
    return {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2}


def _iso(value: dt.datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse(text: Any) -> dt.datetime:
    if not isinstance(text, str):
        raise TypeError("not a string")
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parse_optional(text: Any) -> dt.datetime | None:
    try:
        return _parse(text)
    except (TypeError, ValueError):
        return None
