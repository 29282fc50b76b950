"""`utilitarian config check`: the effective configuration with secrets masked, or every error."""

from __future__ import annotations

import json
import sys

from utilitarian.errors import ConfigError


def register(sub, parent) -> None:
    p = sub.add_parser("config", parents=[parent], help="check and show the configuration")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", parents=[parent],
                               help="validate the TOML file; print the effective config (exit 0) or errors (exit 78)")
    check.add_argument("--json", action="store_true", help="print the effective config as JSON")
    check.set_defaults(handler=run_check)


def run_check(args) -> int:
    from utilitarian.config import load_config
    from utilitarian.config_schema import masked_items
    from utilitarian.validation import validate

    try:
        config = load_config(getattr(args, "config", None))
        validate(config)  # what worker and beat check at start, nothing more, nothing less
    except ConfigError as exc:
        from utilitarian.log import mask_text

        for line in mask_text(str(exc)).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    problems = _amr_task_problems(config)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return ConfigError.exit_code
    items = masked_items(config)
    if args.json:
        print(json.dumps({k: v for k, v in items}, indent=2, default=str))
        return 0
    print(f"# effective configuration from {config.source or 'built-in defaults'}")
    for key, value in items:
        print(f"{key} = {_toml_value(value)}")
    return 0


def _amr_task_problems(config) -> list[str]:
    """What workers would refuse in the AMR tasks of the config's store (when AMR is installed)."""
    try:
        from utilitarian.amr.task_checks import check_config_registry
    except ImportError:
        return []
    return check_config_registry(config)


def _toml_value(value) -> str:
    if value is None:
        return "# (unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, default=str)
