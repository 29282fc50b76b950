"""`utilitarian read URL`: poll one meter from the shell and print its readings and events.

The operator's first tool when a meter does not report. Module imports stay light: protocol code
(pymodbus, pyserial) is imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

EPILOG = """\
URLs:
  iec62056-21+tcp://HOST:PORT?address=12345678     transparent gateway / IP modem
  iec62056-21+serial:///dev/ttyUSB0[?address=..]   optical head or RS-485 (300 baud 7E1, baud switch)
  lis200+tcp://HOST:PORT   lis200+serial:///dev/ttyUSB0   Elster EK2x0 volume converters
  modbus+tcp://HOST:PORT?device_id=1&type=eastron_sdm630
  modbus+rtu:///dev/ttyUSB0?baud=9600&device_id=1&type=eastron_sdm120
  modbus+rtu-over-tcp://HOST:PORT?device_id=3&type=abb_b23   serial gateway without Modbus TCP
  corus+tcp://HOST:PORT   corus+serial:///dev/ttyUSB0[?baud=9600]   Itron Corus over I-FLAG
  dlms+tcp://HOST[:4059]?client=16&server=1        DLMS/COSEM, TCP wrapper (physical=N: HDLC via gateway)
  dlms+serial:///dev/ttyUSB0?physical=17           DLMS/COSEM, HDLC on a serial line (9600 8N1)
      security=none|lls|hls-gmac, keys=FILE or systemd credential name, key_id, invocation_counter=OBIS
  mbus+tcp://HOST:PORT?address=5   mbus+serial:///dev/ttyUSB0?secondary=12345678   wired M-Bus (2400 8E1)
  common parameters: timeout=SECONDS (one read), session_timeout=SECONDS, tz=Europe/Stockholm
  62056-21 parameters: baud, max_baud, switch_delay=SECONDS, wakeup=1 (battery meters), retries

calls (default: readout for 62056-21, read_values for Modbus, read_parameters of the indexes
for Corus; LIS-200 needs --call; docs/meters.md lists every call and kwarg):
  generic_iec6205621: readout, read_values {"addresses": [...]}, set_time {"allowed_drift_seconds": 10},
                      read_load_profile {"start_date": ISO}, read_load_profile_by_offset_seconds
  generic_lis200: read_single_value {"address": "2:300.0"}, read_archive_by_date {"start_date": ISO},
                  read_archive_by_offset_seconds {"offset_seconds": 86400}, set_time
  generic_corus: read_parameters {"parameters": [...]}, read_database {"database": "hourly"},
                 read_database_by_offset_seconds {"offset_seconds": 3600, "database": "hourly"}, set_time
  generic_modbus: read_values [{"series": [...]}]
  generic_dlms: read_registers {"registers": ["1-0:1.8.0"]} (default: 1-0:1.8.0 and 1-0:2.8.0),
                read_load_profile {"offset_seconds": 86400}, read_clock, set_time
  generic_mbus: read_values [{"series": {"energy": "heat_energy"}}]

exit codes:
  0   readings (and events) printed
  75  timeout or meter unreachable (retryable)
  1   checksum, protocol, authentication or unsupported (retrying will not help)
  64  bad URL, --call or --kwargs
  78  bad configuration (meter types)
Passwords: --password-env VAR reads the meter password (or LIS-200 lock key) from the
environment, so it never shows in the process list or shell history."""


def register(sub, parent) -> None:
    p = sub.add_parser(
        "read", parents=[parent], help="read one meter now and print readings and events",
        description="Poll one meter through its execution environment and print what it returned.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="meter URL (see below)")
    p.add_argument("--call", metavar="NAME", help="task_call to run")
    p.add_argument("--kwargs", metavar="JSON", default="{}", help="task_kwargs as a JSON object")
    p.add_argument("--execution-type", metavar="TYPE",
                   help="an execution environment, e.g. generic_dlms (default: from the URL)")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    p.add_argument("--meter-types", metavar="FILE",
                   help="extra TOML with [meter_types.<name>] tables (over built-ins and config)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=run)


def _meter_types(args, config_types: dict):
    from utilitarian.amr.meter_types import (load_meter_types_file, load_registered_meter_types,
                                             parse_meter_types)
    types = load_registered_meter_types()
    if config_types:
        types.update(parse_meter_types(config_types, file=getattr(args, "config", None) or "config"))
    if args.meter_types:
        types.update(load_meter_types_file(args.meter_types))
    return types


def _print_table(result, out) -> None:
    rows = [(r.series, r.timestamp.isoformat(), r.value, r.unit or "") for r in result.readings]
    if rows:
        widths = [max(len(h), *(len(row[i]) for row in rows))
                  for i, h in enumerate(("SERIES", "TIMESTAMP", "VALUE", "UNIT"))]
        header = ("SERIES", "TIMESTAMP", "VALUE", "UNIT")
        for row in (header, *rows):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3]]
            print("  ".join(cells).rstrip(), file=out)
    else:
        print("(no readings)", file=out)
    for event in result.events:
        print(f"EVENT  {event.title}" + (f": {event.content}" if event.content else ""), file=out)


def run(args) -> int:
    from utilitarian.amr.environments import default_execution_type, environment, run_task_call
    from utilitarian.amr.errors import MeterError
    from utilitarian.amr.target import parse_meter_url
    from utilitarian.commands.common import json_arg, load
    from utilitarian.errors import ConfigError, UsageError

    config = load(args, process_name="read")
    if (getattr(args, "loglevel", None) or config.logging.level).lower() != "debug":
        # pymodbus logs its own version of every failure; the typed error below says it once.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    secret = None
    if args.password_env:
        secret = os.environ.get(args.password_env)
        if secret is None:
            raise UsageError(f"--password-env: ${args.password_env} is not set")
    try:
        target = parse_meter_url(args.url, secret=secret)
    except ConfigError as exc:
        raise UsageError(f"meter URL: {exc.reason}") from None
    kwargs = json_arg(args.kwargs, "--kwargs", dict)
    execution_type = args.execution_type or default_execution_type(target.protocol)
    try:
        module = environment(execution_type)
    except MeterError as exc:
        raise UsageError(exc.message) from None
    call = args.call or getattr(module, "DEFAULT_CALL", None)
    if call is None:
        raise UsageError(f"{execution_type} has no default call; give --call ({', '.join(module.CALLS)})")
    if not args.call and not kwargs:
        kwargs = dict(getattr(module, "DEFAULT_KWARGS", {}).get(call, {}))
    meter_types = _meter_types(args, config.meter_types) if target.protocol == "modbus" else None
    try:
        result = run_task_call(execution_type, call, target, kwargs, meter_types=meter_types)
    except MeterError as exc:
        if args.json:
            json.dump({"meter": target.url, "execution_type": execution_type, "task_call": call,
                       "error": {"kind": exc.kind, "retryable": exc.retryable,
                                 "message": exc.message}}, sys.stdout, indent=2)
            print()
        raise
    if args.json:
        json.dump({"meter": target.url, "execution_type": execution_type, "task_call": call,
                   **result.as_dict()}, sys.stdout, indent=2)
        print()
    else:
        print(f"# {target.url}  {execution_type}.{call}")
        _print_table(result, sys.stdout)
    return 0
