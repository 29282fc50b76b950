"""`utilitarian worker`: the pre-fork supervisor that replaces `celery worker`."""

from __future__ import annotations

import argparse


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(sub, parent) -> None:
    p = sub.add_parser("worker", parents=[parent], help="run a supervised pool of task-executing children",
                       description="Run task workers: a master process forks children per pool; each child "
                                   "consumes its queues and runs tasks in a thread pool. Signals to the master: "
                                   "TERM/INT graceful stop, QUIT quick stop, HUP reload TOML and roll children, "
                                   "TTIN/TTOU one process more/less per pool.")
    p.add_argument("-Q", "--queues", action="append", type=_csv, metavar="Q1,Q2",
                   help="queues to consume (full or short names); default: all 14")
    p.add_argument("-X", "--exclude-queues", action="append", type=_csv, default=[], metavar="Q",
                   help="queues not to consume")
    p.add_argument("-c", "--concurrency", type=int, metavar="PROCESSES", help="children per pool (default: CPUs)")
    p.add_argument("--threads", type=int, metavar="T", help="task threads per child (default: per queue, config)")
    p.add_argument("--prefetch-multiplier", type=float, metavar="M",
                   help="unacked messages per child = threads x M (default: [worker] prefetch_multiplier, 4)")
    p.add_argument("--profile", metavar="NAME", help="pools from [workers.NAME] (the systemd instance name)")
    p.add_argument("--max-tasks-per-child", type=int, metavar="N")
    p.add_argument("--max-memory-per-child", type=float, metavar="MiB")
    p.add_argument("--hard-time-limit", type=float, metavar="S", help="default hard limit per task")
    p.add_argument("--graceful-timeout", type=float, metavar="S", help="TERM: in-flight tasks get this long")
    p.add_argument("--exit-when-idle", type=float, metavar="S", help="exit 0 once idle this long")
    p.add_argument("-I", "--include", action="append", default=[], metavar="MODULE",
                   help="extra task module to import (repeatable)")
    p.add_argument("-n", "--hostname", dest="name", metavar="NAME", help="node name (default: PROFILE@host)")
    p.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port")
    p.add_argument("--control-socket", metavar="PATH", help="status socket (default under the runtime dir)")
    p.set_defaults(handler=run)


def options_from(args: argparse.Namespace):
    from utilitarian.errors import UsageError
    from utilitarian.supervisor.plan import WorkerOptions

    for flag, value in (("-c", args.concurrency), ("--threads", args.threads),
                        ("--max-tasks-per-child", args.max_tasks_per_child)):
        if value is not None and value < (0 if flag == "--max-tasks-per-child" else 1):
            raise UsageError(f"{flag} must be at least {0 if flag == '--max-tasks-per-child' else 1}")
    for flag, value in (("--max-memory-per-child", args.max_memory_per_child),
                        ("--hard-time-limit", args.hard_time_limit), ("--graceful-timeout", args.graceful_timeout),
                        ("--exit-when-idle", args.exit_when_idle)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must not be negative")
    if args.prefetch_multiplier is not None and not 1.0 <= args.prefetch_multiplier <= 100.0:
        raise UsageError("--prefetch-multiplier must be between 1 and 100")
    queues = tuple(q for group in args.queues for q in group) if args.queues else None
    return WorkerOptions(
        queues=queues, exclude=tuple(q for group in args.exclude_queues for q in group),
        processes=args.concurrency, threads=args.threads, prefetch_multiplier=args.prefetch_multiplier,
        profile=args.profile,
        max_tasks_per_child=args.max_tasks_per_child, max_memory_per_child=args.max_memory_per_child,
        hard_time_limit=args.hard_time_limit, graceful_timeout=args.graceful_timeout,
        exit_when_idle=args.exit_when_idle, includes=tuple(args.include), name=args.name)


def prepare(args: argparse.Namespace, config):
    """(plan, settings, registry) for this command line and config; raises ConfigError/UsageError."""
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.supervisor.plan import build_plan
    from utilitarian.validation import validate

    plan = build_plan(config, options_from(args))
    # The same checks as `config check` and beat, plus this profile's own imports.
    registry = validate(config, plan.imports, profiles=[plan.profile] if plan.profile else ())
    return plan, settings_from_config(config), registry


def control_agent(plan, control: str | None):
    """What the children need to answer `status --all` and `utilitarian control` for this worker
    over the broker (fleet/agent.py); none without a control socket, the agent's only way to the
    master."""
    import os

    from utilitarian import __version__
    from utilitarian.fleet.agent import ControlPost
    from utilitarian.fleet.protocol import Member
    from utilitarian.hostname import host_name

    if control is None:
        return None
    return ControlPost(Member(plan.name, "worker", host_name(), plan.profile, os.getpid(), __version__), control)


def preload_for_children() -> None:
    """Import, before the fork, what every child imports anyway: shared copy-on-write instead of
    a private copy per child (the list is what a child had imported that its master had not;
    -3.4 MiB idle PSS of `-c 2` for the last six and the collectors). A broken plugin is left
    for the child to report."""
    import encodings.idna  # noqa: F401  (pika's connect encodes the host name)
    import sqlite3  # noqa: F401
    import pika.adapters.blocking_connection  # noqa: F401
    import utilitarian.app  # noqa: F401
    import utilitarian.broker.consumer  # noqa: F401
    import utilitarian.broker.topology  # noqa: F401
    import utilitarian.fleet.agent  # noqa: F401
    import utilitarian.supervisor.collectors  # noqa: F401
    import utilitarian.supervisor.idle_probe  # noqa: F401
    import utilitarian.supervisor.runner  # noqa: F401
    from utilitarian import plugins
    from utilitarian.errors import ConfigError

    plugins.warm()
    try:
        plugins.callables(plugins.METRICS_COLLECTORS_GROUP)  # imported now: the children find them loaded
    except ConfigError:
        pass


def run(args: argparse.Namespace) -> int:
    import gc

    # Start-up creates ~30,000 objects that live as long as the process and ~700 garbage ones:
    # collecting while it imports, then once more before the fork, cost ~15 ms CPU. They are
    # frozen as they are (out of the collector's sight, a child's full collections stop walking
    # them and no longer write to, un-share, those pages), then the collector runs as usual.
    gc.disable()
    try:
        import logging
        import os

        from utilitarian.commands.common import load
        from utilitarian.config import load_config
        from utilitarian.log import enable_stack_dumps
        from utilitarian.supervisor.arbiter import Arbiter
        from utilitarian.supervisor.control import socket_path
        from utilitarian.supervisor.systemd import Notifier

        config = load(args, process_name="master")
        enable_stack_dumps()  # a watchdog SIGABRT leaves the stacks in the journal
        plan, settings, registry = prepare(args, config)
        preload_for_children()
        gc.freeze()
    finally:
        gc.enable()
    loglevel = getattr(args, "loglevel", None) or config.logging.level
    log = logging.getLogger("utilitarian.worker")

    def reload():
        fresh = load_config(getattr(args, "config", None))
        new_plan, new_settings, new_registry = prepare(args, fresh)
        return new_plan, fresh, new_settings, new_registry

    control = args.control_socket or config.worker.control_socket or socket_path(config.runtime_dir(), plan.name)
    metrics = None
    from utilitarian.supervisor.metrics import MetricsServer, port_for

    port = args.metrics_port if args.metrics_port is not None else \
        port_for(config.worker.metrics_port, config.workers, plan.profile)
    if port is not None:
        try:
            metrics = MetricsServer(config.worker.metrics_host, port)
            log.info("metrics on %s", metrics.where)
        except OSError as exc:  # e.g. EADDRINUSE: tasks matter more than the metrics page
            log.error("cannot serve metrics on %s:%d (%s); running without a metrics page (Prometheus will "
                      "report this target down)", config.worker.metrics_host, port, exc.strerror or exc)
    try:
        os.makedirs(os.path.dirname(control), exist_ok=True)
    except OSError as exc:
        log.warning("no control socket (%s): `utilitarian status` will not see this worker", exc)
        control = None
    arbiter = Arbiter(plan, config=config, registry=registry, settings=settings, loglevel=loglevel,
                      reload=reload, notifier=Notifier(), control_path=control, metrics=metrics,
                      agent=control_agent(plan, control))
    return arbiter.run()
