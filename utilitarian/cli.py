"""The `utilitarian` command: argparse wiring and the mapping of errors to exit codes, no logic.

Each subcommand lives in a module of `utilitarian.commands` (or its owning package) that exposes
`register(sub, parent)`. One style for all of them: a command with actions adds
`p.add_subparsers(dest="action", metavar="ACTION", required=True)` and every leaf parser sets
`handler=` (no dispatch functions); the handler returns an exit code from utilitarian.errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from utilitarian import __version__
from utilitarian.errors import EX_INTERRUPTED, EX_OK, EX_SOFTWARE, EX_USAGE, UtilitarianError

# Modules that add subcommands. Kept as names so that `utilitarian --help` imports only argparse
# wiring: heavy imports (pika, pymodbus) happen inside the handlers.
COMMAND_MODULES = (
    "utilitarian.commands.config_cmd",
    "utilitarian.commands.topology_cmd",
    "utilitarian.commands.call_cmd",
    "utilitarian.commands.worker_cmd",
    "utilitarian.commands.status_cmd",
    "utilitarian.commands.control_cmd",
    "utilitarian.commands.dashboard_cmd",
    "utilitarian.commands.dlq_cmd",
    "utilitarian.commands.beat_cmd",
    "utilitarian.commands.schedule_cmd",
    "utilitarian.commands.read_cmd",
    "utilitarian.commands.simulate_cmd",
    "utilitarian.commands.db_cmd",
    "utilitarian.commands.meters_cmd",
    "utilitarian.commands.demo_cmd",
)

log = logging.getLogger("utilitarian.cli")


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts after its name too (`utilitarian worker -l debug`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file (default: $UTILITARIAN_CONFIG, then /etc/utilitarian/utilitarian.toml)")
    parent.add_argument("-l", "--loglevel", metavar="LEVEL", default=argparse.SUPPRESS,
                        help="debug, info, warning, error (default: [logging] level)")
    return parent


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only its own command's module is imported when it
    names one (`worker` -> commands.worker_cmd): importing and wiring all fifteen cost a worker
    ~20 ms CPU of its start-up. Top-level help, an unknown word or a command registered by a
    module of another name (`poll` is in meters_cmd) gets every command."""
    parent = common_options()
    parser = argparse.ArgumentParser(
        prog="utilitarian", parents=[parent],
        description="Workers, beat and meter reading for the utilitarian meter-data platform.")
    parser.add_argument("--version", action="version", version=f"utilitarian {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    word = command_word(argv)
    own = f"utilitarian.commands.{word}_cmd" if word else None
    if own in COMMAND_MODULES:
        _register(own, sub, parent)
        if word in sub.choices:
            return parser
        return build_parser()  # that module registers other names: a fresh parser with every command
    for name in COMMAND_MODULES:
        _register(name, sub, parent)
    return parser


def _register(name: str, sub, parent) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # a real import error inside the module must not hide
            raise
        return
    module.register(sub, parent)


def command_word(argv: list[str] | None) -> str | None:
    """The command named on a command line (the first word that is not an option or the value of
    --config/-l), or None when there is none or help was asked for before it."""
    words = iter(argv or ())
    for word in words:
        if word in ("-h", "--help", "--"):
            return None
        if word in ("--config", "-l", "--loglevel"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return int(args.handler(args) or 0)
    except UtilitarianError as exc:
        from utilitarian.log import mask_text

        print(f"utilitarian: {mask_text(str(exc))}", file=sys.stderr)  # errors may quote a URL
        return exc.exit_code
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except BrokenPipeError:
        return EX_OK
    except Exception:  # the last line of defence: one logged traceback, a distinct code
        log.exception("unexpected error in %r", getattr(args, "command", None))
        return EX_SOFTWARE


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
