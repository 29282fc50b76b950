"""`utilitarian topology declare|show`: create the queues, or list them with depth and consumers."""

from __future__ import annotations

import json

from utilitarian.errors import EX_FAILURE, EX_OK


def register(sub, parent) -> None:
    p = sub.add_parser("topology", parents=[parent], help="declare or inspect the broker topology")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    declare = actions.add_parser("declare", parents=[parent],
                                 help="declare the 14 queues, the dead-letter queue and the delay levels (idempotent)")
    declare.set_defaults(handler=run_declare)
    show = actions.add_parser("show", parents=[parent], help="queues with message count and consumers")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)


def run_declare(args) -> int:
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.commands.common import load

    settings = settings_from_config(load(args))
    declare_topology(settings)
    print(f"declared the task queues, dead-letter queue and delay levels on {settings.where}")
    return 0


def run_show(args) -> int:
    from utilitarian import queues
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import inspect_queues
    from utilitarian.commands.common import load

    settings = settings_from_config(load(args))
    states = inspect_queues(settings, list(queues.QUEUES) + [queues.DEAD_LETTER])
    if args.json:
        print(json.dumps([s.__dict__ for s in states], indent=2))
        return 0
    width = max(len(s.name) for s in states)
    print(f"{'queue':<{width}}  {'messages':>9}  {'consumers':>9}")
    for s in states:
        if s.messages is None:
            print(f"{s.name:<{width}}  {'missing':>9}  {'-':>9}")
        else:
            print(f"{s.name:<{width}}  {s.messages:>9}  {s.consumers:>9}")
    return EX_OK if all(s.messages is not None for s in states) else EX_FAILURE
