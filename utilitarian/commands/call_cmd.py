"""`utilitarian call TASK`: publish one task (with a confirm) and print its id."""

from __future__ import annotations

import datetime as dt

from utilitarian.errors import UsageError


def register(sub, parent) -> None:
    p = sub.add_parser("call", parents=[parent], help="send one task and print its id")
    p.add_argument("task", help="registered task name, e.g. utilitarian.ping")
    p.add_argument("--args", default="[]", metavar="JSON", help="positional arguments as a JSON array")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments as a JSON object")
    p.add_argument("--queue", "-q", help="queue (full or short name); default: the task's route")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--countdown", type=float, metavar="S", help="run no earlier than S seconds from now")
    when.add_argument("--eta", metavar="ISO", help="run no earlier than this time (ISO 8601, default UTC)")
    p.add_argument("--expires", type=float, metavar="S", help="discard if not started within S seconds")
    p.add_argument("--id", dest="task_id", metavar="ID", help="task id (default: a new uuid4)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from utilitarian.app import App
    from utilitarian.commands.common import json_arg, load
    from utilitarian import queues

    config = load(args)
    task_args = json_arg(args.args, "--args", list)
    task_kwargs = json_arg(args.kwargs, "--kwargs", dict)
    eta = None
    if args.eta:
        try:
            eta = dt.datetime.fromisoformat(args.eta.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--eta {args.eta!r} is not an ISO 8601 time") from None
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=dt.timezone.utc)
    if args.countdown is not None and args.countdown < 0:
        raise UsageError("--countdown must not be negative")
    if args.queue and not queues.resolve(args.queue):
        raise UsageError(queues.check_queue(args.queue))
    from utilitarian.broker.topology import ensure_topology

    app = App(config, name="utilitarian call")
    ensure_topology(app.settings)  # a fresh broker or vhost: declare rather than fail unroutable
    try:
        task_id = app.send_task(args.task, task_args, task_kwargs, queue=args.queue, countdown=args.countdown,
                                eta=eta, expires=args.expires, task_id=args.task_id)
    finally:
        app.close()
    print(task_id)
    return 0
