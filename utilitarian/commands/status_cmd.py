"""`utilitarian status`: every worker master on this host (over its control socket), its pools
and children, and the depth of the queues they consume."""

from __future__ import annotations

import json
import sys

from utilitarian.errors import EX_NOT_RUNNING, EX_OK


def register(sub, parent) -> None:
    p = sub.add_parser("status", parents=[parent], help="workers on this host, their children and queues")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--socket", action="append", metavar="PATH", help="query this control socket (repeatable)")
    p.add_argument("--no-queues", action="store_true", help="do not ask the broker for queue depths")
    p.add_argument("--all", action="store_true", help="every worker and beat on the broker, every host "
                   "(over the control exchange; silent ones listed as such)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="S", help="--all: seconds to wait for answers")
    p.set_defaults(handler=run)


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


def _consuming(child: dict) -> str:
    """yes, or why not (as the child said); older masters send no such field."""
    if child.get("consuming", child.get("ready")):
        return "yes"
    return f"no: {child['why']}" if child.get("why") else ("booting" if not child.get("ready") else "no")


def _mib(rss) -> str:
    return f"{rss / 2**20:.0f}M" if rss else "-"


def gather(config, sockets: list[str] | None, with_queues: bool) -> dict:
    from utilitarian.supervisor.control import discover, query

    workers, unreachable = [], []
    for path in sockets or discover(config.runtime_dir()):
        try:
            doc = query(path)
            doc["socket"] = path
            workers.append(doc)
        except (OSError, ValueError) as exc:
            unreachable.append({"socket": path, "error": str(exc)})
    result = {"workers": workers, "unreachable": unreachable}
    if with_queues:
        names = sorted({q for w in workers for p in w.get("pools", []) for q in p["queues"]})
        if names:
            from utilitarian.broker.connection import settings_from_config
            from utilitarian.broker.topology import inspect_queues
            from utilitarian.errors import BrokerError

            try:
                states = inspect_queues(settings_from_config(config), names, attempts=1)
                result["queues"] = [s.__dict__ for s in states]
            except BrokerError as exc:
                result["queues_error"] = str(exc)
    try:
        from utilitarian.amr.progress import foreign_store_note, status_rounds
    except ImportError:
        status_rounds = foreign_store_note = None
    owner_note = foreign_store_note(config, "utilitarian status") if foreign_store_note else None
    if owner_note:
        result["rounds_error"] = owner_note
    elif status_rounds is not None:
        try:  # "rounds": lines; "progress_numbers": per round total, done, failed, pending, started, eta
            result.update(status_rounds(config))
        except Exception as exc:  # the store may not exist on a host that only runs workers
            result["rounds_error"] = str(exc)
    return result


def run_all(config, args) -> int:
    from utilitarian.commands.control_cmd import fleet_exit_code, print_fleet
    from utilitarian.errors import UsageError
    from utilitarian.fleet.inspect import inspect_fleet

    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    reports = inspect_fleet(config, args.timeout)
    if args.json:
        print(json.dumps({"members": reports}, indent=2, default=str))
    else:
        print_fleet(reports)
    return fleet_exit_code(reports)


def run(args) -> int:
    from utilitarian.commands.common import load

    config = load(args)
    if args.all:
        return run_all(config, args)
    result = gather(config, args.socket, not args.no_queues)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return EX_OK if result["workers"] else EX_NOT_RUNNING
    if not result["workers"]:
        print(f"no worker answers under {config.runtime_dir()}", file=sys.stderr)
    for w in result["workers"]:
        t = w["totals"]
        print(f"worker {w['worker']}  pid {w['pid']}  up {_age(w['uptime'])}  {w['state']}  "
              f"{w['rate_per_s']}/s over the last minute  restarts {w['restarts']}")
        print(f"  tasks: {t['done']} done, {t['failed']} failed, {t['retried']} retried, "
              f"{t['refused']} refused, {t['deferred']} deferred")
        if w.get("reload_error"):
            print(f"  reload failed, running the old configuration: {w['reload_error']}")
        causes = {k: n for k, n in (w.get("restarts_by_cause") or {}).items() if n}
        if causes or w.get("reconnects") or w.get("consumer_cancels") or w.get("dead_letter_failures"):
            print(f"  replaced: {', '.join(f'{n} {k}' for k, n in causes.items()) or 'none'}; "
                  f"{w.get('reconnects', 0)} reconnects, {w.get('consumer_cancels', 0)} consumer cancels, "
                  f"{w.get('dead_letter_failures', 0)} failed dead letters/retries (requeued after a backoff)")
        for pool in w["pools"]:
            short = ", ".join(q.removeprefix("utilitarian.tasks.") for q in pool["queues"]) or "-"
            print(f"  pool {pool['name']}: {pool['processes']} x {pool['threads']} threads on {short}")
        if w.get("drained"):
            print(f"  drained (utilitarian control resume QUEUE): "
                  f"{', '.join(q.removeprefix('utilitarian.tasks.') for q in w['drained'])}")
        print(f"    {'pid':>7} {'pool':<10} {'state':<9} {'rss':>6} {'done':>8} {'failed':>7} {'retried':>7} "
              f"{'inflight':>8} {'uptime':>7} {'reconn':>6} {'cancels':>7}  consuming")
        for c in w["children"]:
            print(f"    {c['pid']:>7} {c['pool']:<10} {c['state']:<9} {_mib(c['rss']):>6} {c['done']:>8} "
                  f"{c['failed']:>7} {c['retried']:>7} {c['inflight']:>8} {_age(c['uptime']):>7} "
                  f"{c.get('reconnects', 0):>6} {c.get('cancels', 0):>7}  {_consuming(c)}")
    for u in result["unreachable"]:
        print(f"stale socket {u['socket']}: {u['error']}")
    if result.get("queues"):
        print("queues:")
        for q in result["queues"]:
            depth = "missing" if q["messages"] is None else q["messages"]
            print(f"  {q['name'].removeprefix('utilitarian.tasks.'):<32} {depth!s:>9} messages  "
                  f"{q['consumers'] if q['consumers'] is not None else '-'!s:>4} consumers")
    elif result.get("queues_error"):
        print(f"queues: {result['queues_error']}")
    if result.get("rounds_error"):
        print(result["rounds_error"])
    if result.get("rounds"):
        print("rounds:")
        for line in result["rounds"]:
            print(f"  {line}")
    return EX_OK if result["workers"] else EX_NOT_RUNNING
