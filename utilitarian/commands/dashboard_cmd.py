"""`utilitarian dashboard`: serve the read-only status page until TERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from utilitarian.errors import EX_OK, EX_UNAVAILABLE

log = logging.getLogger("utilitarian.dashboard")

DEFAULT_PORT = 8480


def register(sub, parent) -> None:
    p = sub.add_parser("dashboard", parents=[parent],
                       help="serve a read-only status page: hosts, queues, beat, rounds (localhost by default)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--token-file", metavar="PATH",
                   help="file holding the access token (else $UTILITARIAN_DASHBOARD_TOKEN); required off localhost")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2.0)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from utilitarian.commands.common import load
    from utilitarian.dashboard import server
    from utilitarian.dashboard.auth import load_token
    from utilitarian.errors import UsageError

    config = load(args, process_name="dashboard")
    if args.interval < 0.2:
        raise UsageError("--interval must be at least 0.2 seconds")
    token = load_token(args.token_file)
    stop = threading.Event()

    def handle_stop(signum, _frame) -> None:  # only record; the main thread acts
        stop.set()

    signal.signal(signal.SIGTERM, handle_stop)
    signal.signal(signal.SIGINT, handle_stop)
    try:
        running = server.start(config, bind=args.bind, port=args.port, token=token, interval=args.interval)
    except OSError as exc:
        print(f"dashboard: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(f"dashboard on {running.url}" + (" (token required)" if token else ""), flush=True)
    log.info("dashboard serving %s; data refreshed every %.1fs", running.url, args.interval)
    while not stop.wait(1.0):
        pass
    running.stop()
    log.info("dashboard stopped")
    return EX_OK
