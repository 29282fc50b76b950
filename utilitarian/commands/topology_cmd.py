"""`utilitarian topology declare|show|migrate`: create the queues, list them with depth, consumers
and type, or move a live installation's messages to the other queue type in a new vhost."""

from __future__ import annotations

import json

from utilitarian.errors import EX_FAILURE, EX_OK


def register(sub, parent) -> None:
    p = sub.add_parser("topology", parents=[parent], help="declare, inspect or migrate the broker topology")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    declare = actions.add_parser("declare", parents=[parent],
                                 help="declare the 14 queues, the dead-letter queue and the delay levels (idempotent)")
    declare.set_defaults(handler=run_declare)
    show = actions.add_parser("show", parents=[parent], help="queues with message count, consumers and type")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)
    migrate = actions.add_parser(
        "migrate", parents=[parent],
        help="move every message of an old vhost to the configured vhost, declared as [broker] queue_type",
        description="Declare the topology in the configured vhost with [broker] queue_type, then move every "
                    "message of --from-vhost there (confirmed, then acked) until that vhost is drained: no "
                    "message, no consumer, no beat leading. Switch workers, beat and producers to the new "
                    "vhost meanwhile (docs/operations.md, \"A RabbitMQ cluster\"). TERM or Ctrl-C: one last "
                    "sweep, then exit 0 if drained, else 75.")
    migrate.add_argument("--to", required=True, choices=("classic", "quorum"),
                         help="the queue type to move to; must be [broker] queue_type of the config")
    migrate.add_argument("--from-vhost", required=True, metavar="VHOST", help="the vhost to empty")
    migrate.add_argument("--until-idle", type=float, default=None, metavar="SECONDS",
                         help="stop once the old vhost stayed drained this long (default: run until TERM)")
    migrate.add_argument("--check", action="store_true",
                         help="move nothing: report the new vhost's queue types and what is left in the old one")
    migrate.set_defaults(handler=run_migrate)


def run_declare(args) -> int:
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.commands.common import load

    settings = settings_from_config(load(args))
    declare_topology(settings)
    print(f"declared the task queues, dead-letter queue and delay levels as {settings.queue_type} queues "
          f"on {settings.where}")
    return EX_OK


def run_show(args) -> int:
    from utilitarian import queues
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import inspect_queues
    from utilitarian.commands.common import load

    settings = settings_from_config(load(args))
    states = inspect_queues(settings, list(queues.QUEUES) + [queues.DEAD_LETTER], types=True)
    if args.json:
        print(json.dumps([s.__dict__ for s in states], indent=2))
    else:
        width = max(len(s.name) for s in states)
        print(f"{'queue':<{width}}  {'messages':>9}  {'consumers':>9}  type (configured: {settings.queue_type})")
        for s in states:
            if s.messages is None:
                print(f"{s.name:<{width}}  {'missing':>9}  {'-':>9}  -")
            else:
                flag = "" if s.type == settings.queue_type else "  <- not the configured type"
                print(f"{s.name:<{width}}  {s.messages:>9}  {s.consumers:>9}  {s.type}{flag}")
    ok = all(s.messages is not None and s.type == settings.queue_type for s in states)
    return EX_OK if ok else EX_FAILURE


def run_migrate(args) -> int:
    import signal

    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.migrate import Migration, check
    from utilitarian.commands.common import load
    from utilitarian.errors import EX_TEMPFAIL, ConfigError

    config = load(args)
    settings = settings_from_config(config)
    if args.to != settings.queue_type:
        raise ConfigError(f"`--to {args.to}` but queue_type is {settings.queue_type!r}: set queue_type = "
                          f"\"{args.to}\" and point url at the new vhost first", file=config.source,
                          key="broker.queue_type")
    if args.check:
        ok, lines = check(settings, args.from_vhost)
        print("\n".join(lines))
        return EX_OK if ok else EX_TEMPFAIL
    migration = Migration(settings, args.from_vhost)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: migration.request_stop())
    print(f"moving messages from vhost {args.from_vhost!r} to {settings.where} ({settings.queue_type} queues)",
          flush=True)
    drained = migration.run(until_idle=args.until_idle, report=lambda text: print(text, flush=True))
    print(migration.describe(), flush=True)
    return EX_OK if drained else EX_TEMPFAIL
