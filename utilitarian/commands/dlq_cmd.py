"""`utilitarian dlq list|replay|purge`: look at, send back or delete dead letters, filtered by
origin queue and task name. Messages not selected stay where they are, in their order."""

from __future__ import annotations

import json


def register(sub, parent) -> None:
    p = sub.add_parser("dlq", parents=[parent], help="inspect, replay or purge dead-lettered messages")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("list", "show dead letters with their reason"),
                       ("replay", "send dead letters back to their origin queue with a fresh retry budget"),
                       ("purge", "delete dead letters")):
        a = actions.add_parser(name, parents=[parent], help=text)
        a.add_argument("--queue", "-q", metavar="Q", help="only those that came from this queue")
        a.add_argument("--task", metavar="NAME", help="only this task name")
        a.add_argument("--limit", type=int, metavar="N", help="at most N messages")
        if name == "list":
            a.add_argument("--json", action="store_true")
        a.set_defaults(handler=run)


def run(args) -> int:
    from utilitarian import queues
    from utilitarian.broker.connection import connect_blocking, settings_from_config, translate
    from utilitarian.broker.publisher import ConfirmedPublisher
    from utilitarian.broker import redeliver
    from utilitarian.commands.common import load
    from utilitarian.errors import UsageError

    config = load(args)
    origin = None
    if args.queue:
        origin = queues.resolve(args.queue)
        if origin is None:
            raise UsageError(queues.check_queue(args.queue))
    settings = settings_from_config(config)
    connection = connect_blocking(settings, name="utilitarian dlq", attempts=3)
    publisher = ConfirmedPublisher(settings, name="utilitarian dlq replay") if args.action == "replay" else None
    shown = []
    acted = 0
    try:
        channel = connection.channel()
        try:
            total = channel.queue_declare(queues.DEAD_LETTER, passive=True).method.message_count
        except Exception as exc:
            raise translate(exc, settings) from None
        # Take each message once (unacked): selected ones are acted on and acked, the rest go
        # back when the channel closes, in their order.
        for _ in range(total):
            if args.limit is not None and len(shown) >= args.limit:
                break
            method, props, body = channel.basic_get(queues.DEAD_LETTER, auto_ack=False)
            if method is None:
                break
            headers = props.headers or {}
            if origin and headers.get(redeliver.DEAD_QUEUE) != origin:
                continue
            if args.task and headers.get("task") != args.task:
                continue
            shown.append({"task": headers.get("task"), "id": headers.get("id"),
                          "queue": headers.get(redeliver.DEAD_QUEUE), "reason": headers.get(redeliver.DEAD_REASON),
                          "error": headers.get(redeliver.DEAD_ERROR), "attempts": headers.get(redeliver.DEAD_ATTEMPTS),
                          "at": headers.get(redeliver.DEAD_AT), "bytes": len(body)})
            if args.action == "replay":
                _queue, outgoing = redeliver.replay(body, props)
                publisher.publish(outgoing)
                channel.basic_ack(method.delivery_tag)
                acted += 1
            elif args.action == "purge":
                channel.basic_ack(method.delivery_tag)
                acted += 1
    finally:
        if publisher is not None:
            publisher.close()
        if connection.is_open:
            connection.close()
    if args.action == "list":
        if getattr(args, "json", False):
            print(json.dumps(shown, indent=2, default=str))
        else:
            for m in shown:
                queue = str(m["queue"] or "?").removeprefix("utilitarian.tasks.")
                print(f"{m['at'] or '?':<32} {queue:<24} {m['task'] or '?':<32} {m['id'] or '?':<36} "
                      f"{m['reason']}: {str(m['error'] or '')[:120]}")
            print(f"{len(shown)} dead letter(s) shown of {total}")
    else:
        verb = "replayed" if args.action == "replay" else "purged"
        print(f"{acted} dead letter(s) {verb}")
    return 0
