"""`utilitarian config check`: the effective configuration with secrets masked, or every error;
`--profile` also builds that worker's pools, `--connect` asks the broker (utilitarian/broker/preflight.py)."""

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
    check.add_argument("--profile", metavar="NAME",
                       help="also build worker profile NAME as `worker --profile NAME` would (pools, task imports)")
    check.add_argument("--connect", action="store_true",
                       help="also connect to the broker: credentials, vhost, TLS, permissions, existing queues' "
                            "types (exit 78 when refused, 69 when unreachable)")
    check.add_argument("-q", "--quiet", action="store_true", help="print errors only (for ExecReload= and scripts)")
    check.set_defaults(handler=run_check)


def run_check(args) -> int:
    from utilitarian.config import load_config
    from utilitarian.config_schema import masked_items
    from utilitarian.validation import validate

    try:
        config = load_config(getattr(args, "config", None))
        # What beat and the worker of every profile (or of the one named) check at start.
        validate(config, profiles=None if args.profile is None else [args.profile])
    except ConfigError as exc:
        from utilitarian.log import mask_text

        for line in mask_text(str(exc)).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    problems = _amr_task_problems(config) + _profile_problems(config, args.profile)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return ConfigError.exit_code
    if not args.quiet:
        items = masked_items(config)
        if args.json:
            print(json.dumps({k: v for k, v in items}, indent=2, default=str))
        else:
            print(f"# effective configuration from {config.source or 'built-in defaults'}")
            for key, value in items:
                print(f"{key} = {_toml_value(value)}")
    if args.connect:  # after the file: a refused file never reaches the broker
        return _connect(config, out=None if args.quiet else sys.stderr if args.json else sys.stdout)
    return 0


def _amr_task_problems(config) -> list[str]:
    """What workers would refuse in the AMR tasks of the config's store (when AMR is installed)."""
    try:
        from utilitarian.amr.task_checks import check_config_registry
    except ImportError:
        return []
    return check_config_registry(config)


def _profile_problems(config, profile: str | None) -> list[str]:
    """What `worker --profile NAME` (and its reload on HUP) would refuse beyond the file itself."""
    if profile is None:
        return []
    from utilitarian.errors import UtilitarianError
    from utilitarian.supervisor.plan import WorkerOptions, build_plan
    from utilitarian.tasks import Registry

    try:
        plan = build_plan(config, WorkerOptions(profile=profile))
        Registry.for_config(config, plan.imports)  # the task modules the master imports
    except UtilitarianError as exc:
        return str(exc).splitlines()
    return []


def _connect(config, *, out) -> int:
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.preflight import check_broker, exit_code

    findings = check_broker(settings_from_config(config))
    for f in findings:
        if not f.ok:
            print(f"error: {f.text}", file=sys.stderr)
        elif out is not None:
            print(f"# ok: {f.text}", file=out)
    return exit_code(findings)


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
