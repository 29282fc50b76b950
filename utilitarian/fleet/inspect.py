"""The client side of fleet control: one round trip over the broker to every worker master and
beat (`ask`), the fleet as a list of member reports, silent ones included (`inspect_fleet`), and
operator commands checked against that list before anything is sent (`send_command`).

Reading: a request goes to the control exchange with a reply queue of this client's own and a
deadline; the roster (fleet/protocol.py) is read meanwhile. The round ends at the deadline, or as
soon as every member the roster knows has answered."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field

from utilitarian.errors import AuthenticationRefused, BrokerError, UsageError
from utilitarian.fleet.protocol import CONTROL_EXCHANGE, FORGET_AFTER, ROSTER, Request, declare_control, \
    known_members
from utilitarian.fleet.report import member_report, silent_report

ROSTER_QUIET = 0.3  # seconds without a roster message after which it is taken as read
UTC = dt.timezone.utc


class FleetAccessRefused(AuthenticationRefused):
    """The broker user may not use the vhost or the control exchange: nothing was sent."""


@dataclass
class Round:
    replies: list[dict] = field(default_factory=list)
    announcements: list[dict] = field(default_factory=list)


def ask(settings, request: Request, *, wait_for_roster: bool = True, clock=time.time) -> Round:
    """Publish `request` and collect replies until its deadline (or until every member the roster
    knows of that the request targets has answered)."""
    import pika

    from utilitarian.broker.connection import connect_blocking, translate

    result = Round()
    try:
        connection = connect_blocking(settings, name="utilitarian control client", attempts=1)
    except AuthenticationRefused as exc:
        raise FleetAccessRefused(f"{exc}: fleet control needs a broker user with permissions on the vhost "
                                 f"({settings.vhost}); nothing was sent") from None
    try:
        try:
            channel = connection.channel()
            declare_control(channel)
            reply_queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.basic_consume(reply_queue, lambda _c, _m, _p, body: _keep(result.replies, body, request.id),
                                  auto_ack=True)
            roster = connection.channel()
            roster.basic_qos(prefetch_count=2000)
            since = dt.datetime.fromtimestamp(clock() - FORGET_AFTER, UTC)
            last_roster = [time.monotonic()]

            def on_roster(ch, method, _props, body) -> None:
                _keep(result.announcements, body, None)
                last_roster[0] = time.monotonic()
                ch.basic_ack(method.delivery_tag)

            roster.basic_consume(ROSTER, on_roster, arguments={"x-stream-offset": since})
            channel.basic_publish(CONTROL_EXCHANGE, "", request.encode(), pika.BasicProperties(
                reply_to=reply_queue, correlation_id=request.id, content_type="application/json",
                expiration=str(max(1, int((request.deadline - clock()) * 1000)))))
            while clock() < request.deadline:
                connection.process_data_events(time_limit=min(0.05, max(0.0, request.deadline - clock())))
                if wait_for_roster and time.monotonic() - last_roster[0] >= ROSTER_QUIET \
                        and _everyone_answered(result, request, clock()):
                    break
        except Exception as exc:  # pika's many types: one translation at this boundary
            err = translate(exc, settings)
            if getattr(err, "reply_code", None) == 403 or "ACCESS_REFUSED" in str(err):
                raise FleetAccessRefused(f"{err}; nothing was sent") from None
            raise err from None
    finally:
        try:
            if connection.is_open:
                connection.close()
        except Exception:  # closing a broken connection: nothing left to do
            pass
    return result


def _keep(into: list, body: bytes, request_id: str | None) -> None:
    try:
        doc = json.loads(body)
    except ValueError:
        return
    if isinstance(doc, dict) and (request_id is None or doc.get("id") == request_id):
        into.append(doc)


def _everyone_answered(result: Round, request: Request, now: float) -> bool:
    from utilitarian.fleet.protocol import Member

    answered = {r.get("member") for r in result.replies}
    for name, a in known_members(result.announcements, now).items():
        member = Member(name, str(a.get("kind")), str(a.get("host")))
        if member.targeted(request) and name not in answered:
            return False
    return bool(answered) or not result.announcements


def inspect_fleet(config, timeout: float = 2.0, *, settings=None, clock=time.time) -> list[dict]:
    """Every worker master and beat on the broker, one report each (fleet/report.py), sorted by
    host and name: those that answered within `timeout` seconds, and those the roster knows that
    did not ("state": "silent")."""
    if settings is None:
        from utilitarian.broker.connection import settings_from_config

        settings = settings_from_config(config)
    request = Request.make("status", timeout=timeout, now=clock())
    found = ask(settings, request, clock=clock)
    return reports_of(found, clock())


def reports_of(found: Round, now: float) -> list[dict]:
    reports = {}
    for reply in found.replies:
        reports[reply.get("member")] = member_report(reply)
    for name, a in known_members(found.announcements, now).items():
        if name not in reports:
            reports[name] = silent_report(a, now)
        else:
            reports[name].setdefault("announced", a.get("at"))
    return sorted(reports.values(), key=lambda r: (str(r.get("host")), str(r.get("member"))))


def send_command(config, cmd: str, args: dict, *, host: str | None = None, timeout: float = 2.0,
                 settings=None, clock=time.time) -> tuple[list[dict], list[dict]]:
    """Check `cmd` against the fleet as it answers now, then send it to the workers it applies to.
    Returns (replies, reports). An unknown host, or a pool or queue no targeted worker has, is a
    UsageError and nothing is sent."""
    if settings is None:
        from utilitarian.broker.connection import settings_from_config

        settings = settings_from_config(config)
    reports = reports_of(ask(settings, Request.make("status", timeout=timeout, now=clock()), clock=clock), clock())
    targets = check_targets(reports, cmd, args, host)
    if cmd == "ping":
        request = Request.make("ping", host=host, timeout=timeout, now=clock())
    else:
        request = Request.make(cmd, args, kinds=("worker",), members=[r["member"] for r in targets],
                               timeout=timeout, now=clock())
    replies = ask(settings, request, clock=clock).replies
    return replies, targets


def check_targets(reports: list[dict], cmd: str, args: dict, host: str | None) -> list[dict]:
    """The answering workers `cmd` goes to; raises UsageError when there are none (pure)."""
    from utilitarian import queues as q

    if host is not None and not any(host in (r.get("host"), r.get("member")) for r in reports):
        known = ", ".join(sorted({str(r.get("host")) for r in reports})) or "none on this broker"
        raise UsageError(f"unknown host {host!r} (hosts: {known}); nothing was sent")
    chosen = [r for r in reports if host is None or host in (r.get("host"), r.get("member"))]
    if cmd == "ping":
        return chosen
    workers = [r for r in chosen if r.get("kind") == "worker" and r.get("state") == "answering"]
    if cmd in ("grow", "shrink"):
        pool = args.get("pool")
        having = [r for r in workers if any(p.get("name") == pool for p in r.get("pools", ()))]
        if not having:
            known = ", ".join(sorted({p.get("name") for r in workers for p in r.get("pools", ())})) or "none"
            raise UsageError(f"no answering worker{' on ' + host if host else ''} has a pool {pool!r} "
                             f"(pools: {known}); nothing was sent")
        return having
    if cmd in ("drain", "resume"):
        queue = q.resolve(str(args.get("queue")))
        if queue is None:
            raise UsageError(f"{q.check_queue(str(args.get('queue')))}; nothing was sent")
        args["queue"] = queue
        having = [r for r in workers if any(queue in p.get("configured_queues", p.get("queues", ()))
                                            for p in r.get("pools", ()))]
        if not having:
            raise UsageError(f"no answering worker{' on ' + host if host else ''} consumes {queue}; "
                             "nothing was sent")
        return having
    raise UsageError(f"unknown control command {cmd!r}")


__all__ = ["BrokerError", "FleetAccessRefused", "Round", "ask", "check_targets", "inspect_fleet", "reports_of",
           "send_command"]
