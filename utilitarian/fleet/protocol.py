"""The fleet's wire between `utilitarian status --all` / `utilitarian control` and every worker
master and beat on the broker: a fanout control exchange (each member binds an exclusive,
auto-delete queue of its own), requests with a reply_to queue and a deadline, JSON replies, and
the roster: a stream of announcements that says who exists even when it does not answer.

Why a roster: a member that hangs (SIGSTOP, a frozen host) keeps its connection and queue until
the broker's heartbeat check drops them, and then leaves no trace at all. Members announce
themselves when they connect and every ANNOUNCE_INTERVAL on a stream (non-destructive reads, so
any number of clients may read it at once); a member announced within FORGET_AFTER that does not
answer is listed as silent, one that said goodbye ("down") is not listed."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field

CONTROL_EXCHANGE = "utilitarian.control"
ROSTER = "utilitarian.control.roster"
ANNOUNCE_INTERVAL = 60.0  # seconds between a member's announcements
FORGET_AFTER = 3600.0  # a member not announced for this long is no longer listed (not even as silent)
ROSTER_ARGUMENTS = {"x-queue-type": "stream", "x-max-age": "2h", "x-stream-max-segment-size-bytes": 1_000_000}
WORKER_COMMANDS = ("drain", "resume", "grow", "shrink")  # change a worker; ping and status only ask
COMMANDS = ("ping", "status") + WORKER_COMMANDS
UTC = dt.timezone.utc


def declare_control(channel) -> None:
    """The exchange and the roster; idempotent (every member and client declares them)."""
    channel.exchange_declare(CONTROL_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(ROSTER, durable=True, arguments=ROSTER_ARGUMENTS)


@dataclass(frozen=True)
class Member:
    """Who answers: a worker master (by its node name) or a beat (by its identity)."""

    name: str
    kind: str  # "worker" | "beat"
    host: str
    profile: str | None = None
    pid: int | None = None
    version: str | None = None

    def announcement(self, event: str, now: float) -> bytes:
        return json.dumps({"event": event, "member": self.name, "kind": self.kind, "host": self.host,
                           "profile": self.profile, "pid": self.pid, "version": self.version,
                           "at": now}).encode()

    def targeted(self, request: "Request") -> bool:
        if request.kinds and self.kind not in request.kinds:
            return False
        if request.members and self.name not in request.members:
            return False
        return request.host is None or request.host in (self.host, self.name)


@dataclass(frozen=True)
class Request:
    cmd: str
    args: dict = field(default_factory=dict)
    host: str | None = None  # a host name or a member name; None = everyone
    kinds: tuple[str, ...] = ()  # () = workers and beats
    members: tuple[str, ...] = ()  # () = every member; else only these (a command goes where it was checked)
    deadline: float = 0.0  # wall clock (time.time()); a member drops a request found after it
    id: str = ""

    @classmethod
    def make(cls, cmd: str, args: dict | None = None, *, host: str | None = None, kinds=(), members=(),
             timeout: float = 2.0, now: float | None = None) -> "Request":
        now = time.time() if now is None else now
        return cls(cmd, dict(args or {}), host, tuple(kinds), tuple(members), now + timeout, uuid.uuid4().hex)

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "cmd": self.cmd, "args": self.args, "host": self.host,
                           "kinds": list(self.kinds), "members": list(self.members),
                           "deadline": self.deadline}).encode()

    @classmethod
    def decode(cls, body: bytes) -> "Request | None":
        try:
            doc = json.loads(body)
            return cls(str(doc["cmd"]), dict(doc.get("args") or {}), doc.get("host"), tuple(doc.get("kinds") or ()),
                       tuple(doc.get("members") or ()), float(doc["deadline"]), str(doc.get("id") or ""))
        except (ValueError, KeyError, TypeError):
            return None

    def expired(self, now: float) -> bool:
        return now > self.deadline

    def local(self) -> dict:
        """The request as the master's Unix control socket takes it."""
        return {"cmd": self.cmd, **self.args}


def reply_body(member: Member, request_id: str, *, doc: dict | None = None, error: str | None = None) -> bytes:
    return json.dumps({"id": request_id, "member": member.name, "kind": member.kind, "host": member.host,
                       "profile": member.profile, "pid": member.pid, "version": member.version,
                       "ok": error is None, "error": error, "doc": doc or {}}, default=str).encode()


def known_members(announcements: list[dict], now: float, forget_after: float = FORGET_AFTER) -> dict[str, dict]:
    """The roster's members by name from their announcements (oldest first): the latest one of
    each, without those whose latest says "down" or is older than `forget_after`. A member that
    restarted under the same name with another pid is the same member."""
    latest: dict[str, dict] = {}
    for a in announcements:
        name = a.get("member")
        if not isinstance(name, str):
            continue
        if name not in latest or float(a.get("at") or 0) >= float(latest[name].get("at") or 0):
            latest[name] = a
    return {name: a for name, a in latest.items()
            if a.get("event") != "down" and now - float(a.get("at") or 0) <= forget_after}
