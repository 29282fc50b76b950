"""`utilitarian beat`: the scheduler. Safe to run on several hosts: one leads by the broker lock,
the others wait as hot standbys (docs/beat.md)."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("utilitarian.beat")


def register(sub, parent) -> None:
    p = sub.add_parser("beat", parents=[parent],
                       help="run the scheduler: one beat leads by a RabbitMQ lock, others stand by")
    p.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port "
                   "(default: [beat] metrics_port)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from utilitarian.beat.loop import Beat
    from utilitarian.beat.schedule import entries_from_config
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.commands.common import load
    from utilitarian.supervisor.systemd import Notifier
    from utilitarian.validation import validate

    config = load(args, process_name="beat")
    from utilitarian.log import enable_stack_dumps

    enable_stack_dumps()  # a watchdog SIGABRT leaves the stacks in the journal
    entries = entries_from_config(config, validate(config))  # the same checks as `config check`
    disabled = sorted(name for name, entry in config.schedule.items() if not entry.enabled)
    settings = settings_from_config(config)
    notifier = Notifier()
    beat = Beat(settings, entries, beat_config=config.beat, disabled=disabled, notifier=notifier)

    def handle_stop(signum, _frame) -> None:
        beat.request_stop("term")

    port = args.metrics_port if getattr(args, "metrics_port", None) is not None else config.beat.metrics_port
    if port is not None:
        from utilitarian.beat.metrics import serve_in_thread

        serve_in_thread(beat, config.beat.metrics_host, port)
    signal.signal(signal.SIGTERM, handle_stop)
    signal.signal(signal.SIGINT, handle_stop)
    if not entries:
        log.warning("no enabled schedule entries: this beat will hold the lock and fire nothing")
    log.info("beat %s starting with %d entries (%s disabled) on %s; lock heartbeat %.1fs",
             beat.identity, len(entries), len(disabled), settings.where, config.beat.lock_heartbeat)
    try:
        code = beat.run()
    finally:
        notifier.close()
    log.info("beat %s stopped (exit %d)", beat.identity, code)
    return code
