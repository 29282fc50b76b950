"""`utilitarian control ping | drain QUEUE | resume QUEUE | grow POOL N | shrink POOL N [--host H]`
and the fleet table of `utilitarian status --all`: every worker master and beat on the broker,
over the control exchange (utilitarian/fleet)."""

from __future__ import annotations

import argparse
import json
import sys

from utilitarian.errors import EX_FAILURE, EX_NOT_RUNNING, EX_OK


def register(sub, parent) -> None:
    p = sub.add_parser("control", help="ping or change workers on every host over the broker",
                       description="Commands to every worker master on the broker (or one host's with --host). "
                                   "A pool, queue or host no answering worker has is refused before anything is "
                                   "sent. Needs a broker user with permissions on the vhost.")
    options = argparse.ArgumentParser(add_help=False, parents=[parent])
    options.add_argument("--host", metavar="H", help="only this host (or member name)")
    options.add_argument("--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for answers")
    options.add_argument("--json", action="store_true", help="machine-readable output")
    cmds = p.add_subparsers(dest="control_cmd", required=True, metavar="COMMAND")
    cmds.add_parser("ping", help="who answers", parents=[options])
    for name, text in (("drain", "stop consuming QUEUE (in-flight tasks finish; messages stay queued)"),
                       ("resume", "consume QUEUE again")):
        c = cmds.add_parser(name, help=text, parents=[options])
        c.add_argument("queue", metavar="QUEUE")
    for name, text in (("grow", "N more processes in POOL"), ("shrink", "N fewer processes in POOL (at least 1 stays)")):
        c = cmds.add_parser(name, help=text, parents=[options])
        c.add_argument("pool", metavar="POOL")
        c.add_argument("n", type=int, metavar="N")
    p.set_defaults(handler=run)


def run(args) -> int:
    from utilitarian.commands.common import load
    from utilitarian.errors import UsageError
    from utilitarian.fleet.inspect import send_command

    config = load(args)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    cmd = args.control_cmd
    cmd_args = {"queue": args.queue} if cmd in ("drain", "resume") else \
        {"pool": args.pool, "n": args.n} if cmd in ("grow", "shrink") else {}
    replies, targets = send_command(config, cmd, cmd_args, host=args.host, timeout=args.timeout)
    answered = {r.get("member") for r in replies}
    silent = [t for t in targets if t.get("member") not in answered]
    if args.json:
        print(json.dumps({"replies": replies, "silent": silent}, indent=2, default=str))
    else:
        for r in sorted(replies, key=lambda r: str(r.get("member"))):
            doc = r.get("doc") or {}
            what = r.get("error") or doc.get("accepted") or ("pong" if doc.get("pong") else "ok")
            print(f"{r.get('member'):<32} {r.get('host') or '-':<20} {'ok' if r.get('ok') else 'ERROR'}  {what}")
        for t in silent:
            print(f"{t.get('member'):<32} {t.get('host') or '-':<20} SILENT  {t.get('why') or 'no answer in time'}")
    if not replies and not silent:
        print("no worker or beat answers on this broker", file=sys.stderr)
        return EX_NOT_RUNNING
    return EX_OK if replies and all(r.get("ok") for r in replies) and not silent else EX_FAILURE


def print_fleet(reports: list[dict]) -> None:
    if not reports:
        print("no worker or beat answers on this broker", file=sys.stderr)
    for r in reports:
        head = f"{r.get('kind')} {r.get('member')}  host {r.get('host')}  pid {r.get('pid')}  version {r.get('version')}"
        if r.get("profile"):
            head += f"  profile {r['profile']}"
        if r.get("state") != "answering":
            print(f"{head}  {r.get('state', '?').upper()}: {r.get('why')}")
            continue
        print(head)
        if r.get("kind") == "beat":
            nxt = r.get("next_fire") or {}
            line = f"  {r.get('role')}"
            if r.get("role") == "leader":
                line += f" since {r.get('leader_since')}, {r.get('fired')} fired, next {nxt.get('entry')} at {nxt.get('slot')}"
            elif r.get("holder"):
                line += f", lock held by {r['holder']}"
            print(line)
        else:
            pools = "; ".join(f"{p['name']} {p['processes']}x{p['threads']} on "
                              f"{', '.join(q.removeprefix('utilitarian.tasks.') for q in p['queues']) or '-'}"
                              for p in r.get("pools", []))
            print(f"  pools: {pools}")
            print(f"  {r.get('children')} children, {r.get('in_flight')} in flight, {r.get('processed')} processed, "
                  f"{r.get('failed')} failed, {r.get('retired')} retired; consuming: {r.get('consuming')}")
        if r.get("last_error"):
            print(f"  last error: {r['last_error']}")


def fleet_exit_code(reports: list[dict]) -> int:
    if not reports:
        return EX_NOT_RUNNING
    return EX_OK if all(r.get("state") == "answering" for r in reports) else EX_FAILURE
