"""What every subcommand does first: load the config named on the command line and set up
logging from `-l` or `[logging]`."""

from __future__ import annotations

import argparse
import json

from utilitarian.config import Config, load_config
from utilitarian.errors import UsageError
from utilitarian.log import LEVELS, setup_logging


def load(args: argparse.Namespace, *, process_name: str | None = None) -> Config:
    config = load_config(getattr(args, "config", None))
    level = getattr(args, "loglevel", None) or config.logging.level
    if level.lower() not in LEVELS:
        raise UsageError(f"-l/--loglevel must be one of {', '.join(LEVELS)}, not {level!r}")
    setup_logging(level, fmt=config.logging.format, process_name=process_name)
    return config


def json_arg(text: str, what: str, kind: type):
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise UsageError(f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return value
