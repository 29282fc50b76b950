"""The registry and readings from the command line: `meters import|list`, `amr-tasks
list|add|attach`, `readings tail|export|events`, and `poll METER` (an on-demand job, the platform's
amr-tasks/invoke). Argument wiring here; the work is in utilitarian.amr.*."""

from __future__ import annotations

import csv
import sys
import time

from utilitarian.errors import EX_FAILURE, EX_OK, EX_TEMPFAIL, UsageError


def register(sub, parent) -> None:
    meters = _group(sub, parent, "meters", "the meter registry: import, list")
    p = meters.add_parser("import", parents=[parent], help="add or update meters from a CSV or TOML file")
    p.add_argument("file", help="meters.csv or meters.toml ([[meters]], [[amr_tasks]], [[amr_task_groups]])")
    p.add_argument("--dry-run", action="store_true", help="validate only, write nothing")
    p.add_argument("--no-promote", action="store_true",
                   help="do not send default.promote_staged_meter_readings for new meters")
    p.set_defaults(handler=run_import)
    p = meters.add_parser("list", parents=[parent], help="meters with interface, type and tasks")
    p.add_argument("--format", choices=("table", "csv"), default="table")
    p.set_defaults(handler=run_list)

    tasks = _group(sub, parent, "amr-tasks", "AMR tasks: list, add, attach")
    p = tasks.add_parser("list", parents=[parent], help="AMR tasks and groups")
    p.set_defaults(handler=run_tasks_list)
    p = tasks.add_parser("add", parents=[parent], help="add or replace an AMR task")
    p.add_argument("name")
    p.add_argument("--schedule", required=True, choices=("quarterly", "hourly", "daily", "weekly", "monthly", "yearly"))
    p.add_argument("--call", required=True, dest="task_call", help="task_call of the execution environment")
    p.add_argument("--execution-type", required=True,
                   help="meter_execution_type: generic_iec6205621, generic_lis200, generic_corus, generic_modbus")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="task_kwargs as a JSON object")
    p.add_argument("--offset", type=float, default=0.0, metavar="S",
                   help="run_offset_seconds after the slot (0 to the schedule's period)")
    p.add_argument("--description", help="free text (the platform's AmrTask description)")
    p.add_argument("--inactive", action="store_true")
    p.set_defaults(handler=run_tasks_add)
    p = tasks.add_parser("attach", parents=[parent],
                         help="give a task to meters directly (--meter), or to a group (--group) and "
                              "optionally put meters into that group")
    p.add_argument("task")
    p.add_argument("--group", help="AMR task group (created if new)")
    p.add_argument("--meter", action="append", default=[], help="meter name (repeatable)")
    p.add_argument("--all-meters", action="store_true", help="every meter in the registry")
    p.set_defaults(handler=run_tasks_attach)

    readings = _group(sub, parent, "readings", "committed readings: tail, export, events")
    p = readings.add_parser("tail", parents=[parent], help="latest committed readings")
    p.add_argument("--meter")
    p.add_argument("-n", type=int, default=20, help="how many (default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new readings (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between checks with --follow")
    p.set_defaults(handler=run_tail)
    p = readings.add_parser("export", parents=[parent], help="readings as CSV, ordered by time")
    p.add_argument("--since", help="ISO 8601 time (inclusive; default: everything)")
    p.add_argument("--until", help="ISO 8601 time (exclusive)")
    p.add_argument("--meter")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("-o", "--output", help="file (default: standard output)")
    p.set_defaults(handler=run_export)
    p = readings.add_parser("events", parents=[parent],
                            help="meter system events: the latest as text, or exported as CSV or JSON")
    p.add_argument("--meter")
    p.add_argument("-n", type=int, default=20, help="how many of the latest (text only; default 20)")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text",
                   help="csv/json: every event in [--since, --until), ordered by time, like `readings export`")
    p.add_argument("--since", help="ISO 8601 time (inclusive; csv/json)")
    p.add_argument("--until", help="ISO 8601 time (exclusive; csv/json)")
    p.add_argument("-o", "--output", help="file (default: standard output)")
    p.set_defaults(handler=run_events)

    p = sub.add_parser("poll", parents=[parent], help="poll one meter now (an on-demand job on amr.on_demand)")
    p.add_argument("meter")
    p.add_argument("--call", required=True, dest="task_call", help="task_call, e.g. read_values")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="task_kwargs as a JSON object")
    p.add_argument("--execution-type", help="default: the meter's")
    p.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the outcome and print it")
    p.set_defaults(handler=run_poll)


def _group(sub, parent, name: str, help_text: str):
    p = sub.add_parser(name, parents=[parent], help=help_text)
    return p.add_subparsers(dest="action", metavar="ACTION", required=True)


def _open(args):
    from utilitarian.amr.store import store_for_config
    from utilitarian.commands.common import load

    config = load(args)
    return config, store_for_config(config)


def _utc(text: str | None, flag: str):
    if text is None:
        return None
    from utilitarian.amr.model import parse_utc

    try:
        return parse_utc(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO 8601 time") from None


# --- meters -------------------------------------------------------------------------------------
def _known(store, app):
    from utilitarian.amr.registry_import import Known, known_execution_types
    from utilitarian.amr.tasks.common import meter_types_of

    tasks = {t.name: t for t in store.list_amr_tasks()} if store is not None else {}
    groups = {g.name: g.tasks for g in store.list_groups()} if store is not None else {}
    return Known(amr_tasks=frozenset(tasks), meter_types=meter_types_of(app),
                 execution_types=known_execution_types(), task_objects=tasks, group_tasks=groups)


def _dry_run_without_store(args, config) -> int:
    """`--dry-run` validates the file even where the store is not migrated (or not there yet)."""
    from utilitarian.amr.registry_import import load_meter_list
    from utilitarian.app import App

    app = App(config, name="utilitarian meters import")
    try:
        meter_list = load_meter_list(args.file, _known(None, app))
    finally:
        app.close()
    print(f"{args.file}: {len(meter_list.entries)} meters, {len(meter_list.tasks)} AMR tasks, "
          f"{len(meter_list.groups)} groups are valid (dry run without the store: tasks and groups "
          "only from the file; nothing written)")
    return 0


def run_import(args) -> int:
    from utilitarian.amr.registry_import import load_meter_list
    from utilitarian.amr.store import StoreError, store_for_config
    from utilitarian.commands.common import load
    from utilitarian.errors import ConfigError

    config = load(args)
    try:
        store = store_for_config(config)
    except (ConfigError, StoreError):  # not migrated, or not even there to open (a new host)
        if args.dry_run:
            return _dry_run_without_store(args, config)
        raise
    with store:
        from utilitarian.app import App

        app = App(config, name="utilitarian meters import")
        try:
            meter_list = load_meter_list(args.file, _known(store, app))
            if args.dry_run:
                print(f"{args.file}: {len(meter_list.entries)} meters, {len(meter_list.tasks)} AMR tasks, "
                      f"{len(meter_list.groups)} groups are valid (dry run, nothing written)")
                return 0
            summary = store.import_registry(meter_list.entries, tasks=meter_list.tasks, groups=meter_list.groups)
            print(f"{args.file}: {len(summary.meters_added)} meters added, {len(summary.meters_updated)} updated, "
                  f"{summary.interfaces} interfaces, {summary.amr_tasks} AMR tasks, {summary.groups} groups")
            if summary.meters_added and not args.no_promote:
                _promote(app, store, summary.meters_added)
        finally:
            app.close()
    return 0


def _promote(app, store, added) -> None:
    waiting = sorted(set(store.staged_meter_names()) & set(added))
    if not waiting:
        return
    try:
        app.send_task("default.promote_staged_meter_readings", kwargs={"meters": waiting})
        print(f"staged readings of {len(waiting)} new meters will be promoted (task sent)")
    except Exception as exc:  # the import itself succeeded; say how to finish the job
        print(f"warning: could not send the promotion task ({exc}); run `utilitarian call "
              f"default.promote_staged_meter_readings` when the broker answers", file=sys.stderr)


def run_list(args) -> int:
    _, store = _open(args)
    with store:
        meters = store.list_meters()
        tasks = store.meter_tasks()
    rows = [(m.name, m.execution_type, m.meter_type or "", m.interface.name if m.interface else "",
             "yes" if m.interface and m.interface.can_block else "", m.config.timezone,
             " ".join(tasks.get(m.name, [])), "" if m.is_active else "inactive") for m in meters]
    header = ("name", "execution_type", "meter_type", "interface", "can_block", "timezone", "tasks", "state")
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
    else:
        _table(header, rows)
        print(f"{len(rows)} meters")
    return 0


def _table(header, rows) -> None:
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


# --- AMR tasks ------------------------------------------------------------------------------------
def run_tasks_list(args) -> int:
    _, store = _open(args)
    with store:
        tasks = store.list_amr_tasks()
        groups = store.list_groups()
    import json

    _table(("name", "schedule", "offset", "execution_type", "task_call", "task_kwargs", "state"),
           [(t.name, t.schedule, f"{t.run_offset_seconds:g}s", t.meter_execution_type, t.task_call,
             json.dumps(t.task_kwargs, sort_keys=True), "active" if t.is_active else "inactive") for t in tasks])
    for g in groups:
        print(f"group {g.name}: {', '.join(g.tasks) or '(no tasks)'}")
    return 0


def run_tasks_add(args) -> int:
    from utilitarian.amr.model import AmrTask
    from utilitarian.amr.task_checks import check_task
    from utilitarian.commands.common import json_arg

    kwargs = json_arg(args.kwargs, "--kwargs", dict)
    task = AmrTask(args.name, args.schedule, args.task_call, args.execution_type, kwargs,
                   args.offset, not args.inactive, description=args.description)
    # Refuse what a worker would refuse, before anything is written.
    problems = check_task(task)
    if problems:
        raise UsageError(f"AMR task {args.name!r} not added: " + "; ".join(problems))
    _, store = _open(args)
    with store:
        mismatched = _mismatches(store, task, None)
        if mismatched:
            raise UsageError(f"AMR task {args.name!r} not replaced: " + "; ".join(mismatched))
        store.add_amr_task(task)
    print(f"AMR task {args.name!r}: {args.schedule}, {args.execution_type}.{args.task_call}")
    return 0


def run_tasks_attach(args) -> int:
    if not (args.group or args.meter or args.all_meters):
        raise UsageError("give --group, --meter or --all-meters")
    _, store = _open(args)
    with store:
        meters = [m.name for m in store.list_meters()] if args.all_meters else args.meter
        task = next((t for t in store.list_amr_tasks() if t.name == args.task), None)
        if task is not None:
            mismatched = _mismatches(store, task, (set(meters), args.group))
            if mismatched:
                raise UsageError(f"AMR task {args.task!r} not attached: " + "; ".join(mismatched))
        try:
            store.attach_task(args.task, group=args.group, meters=meters)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    where = f"group {args.group!r}" if args.group else "meters directly"
    print(f"AMR task {args.task!r} attached to {where}" + (f" ({len(meters)} meters)" if meters else ""))
    return 0


def _mismatches(store, task, attaching) -> list[str]:
    """Meters `task` would not run on: those it is attached to now (replacing it), or the meters
    being attached (`attaching` = (meter names, group)) plus the group's members."""
    from utilitarian.amr.target import parse_meter_url
    from utilitarian.amr.task_checks import check_attachment

    meters = {m.name: m for m in store.list_meters()}
    if attaching is None:
        names = {m for m, tasks in store.meter_tasks().items() if task.name in tasks}
    else:
        names, group = attaching
        if group:
            names |= {m for m, groups in store.meter_groups().items() if group in groups}
    out = []
    for name in sorted(names):
        meter = meters.get(name)
        if meter is not None and (problem := check_attachment(task, name, meter.execution_type,
                                                              parse_meter_url(meter.url).protocol)):
            out.append(problem)
    return out


# --- readings -------------------------------------------------------------------------------------
def _print_reading(reading, committed) -> None:
    from utilitarian.amr.model import iso_utc

    unit = f" {reading.unit}" if reading.unit else ""
    print(f"{iso_utc(reading.timestamp)}  {reading.meter:<24} {reading.series:<28} {reading.value}{unit}", flush=True)


def run_tail(args) -> int:
    _, store = _open(args)
    with store:
        rows = store.tail_readings(meter=args.meter, limit=args.n)
        for reading, committed in rows:
            _print_reading(reading, committed)
        last = rows[-1][1] if rows else None
        while args.follow:
            time.sleep(max(0.1, args.interval))
            rows = store.tail_readings(meter=args.meter, limit=1000, after=last)
            for reading, committed in rows:
                _print_reading(reading, committed)
            if rows:
                last = rows[-1][1]
    return 0


def run_export(args) -> int:
    from utilitarian.amr.export import READING_FIELDS, reading_rows

    since, until = _utc(args.since, "--since"), _utc(args.until, "--until")
    _, store = _open(args)
    with store:
        rows = reading_rows(store.iter_readings(since=since, until=until, meter=args.meter))
        return _export(args, READING_FIELDS, rows, "readings")


def run_events(args) -> int:
    from utilitarian.amr.export import EVENT_FIELDS, event_rows
    from utilitarian.amr.model import iso_utc

    since, until = _utc(args.since, "--since"), _utc(args.until, "--until")
    if args.format == "text" and (since or until or args.output):
        raise UsageError("--since, --until and -o go with --format csv or json")
    _, store = _open(args)
    with store:
        if args.format != "text":
            rows = event_rows(store.iter_events(since=since, until=until, meter=args.meter))
            return _export(args, EVENT_FIELDS, rows, "events")
        for e in reversed(store.list_events(meter=args.meter, limit=args.n)):
            print(f"{iso_utc(e.timestamp)}  {e.meter:<24} {e.title}: {e.content}")
    return 0


def _export(args, fields, rows, what: str) -> int:
    from utilitarian.amr.export import write_rows

    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        count = write_rows(out, args.format, fields, rows)
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"{count} {what} written to {args.output}", file=sys.stderr)
    return 0


# --- on demand ------------------------------------------------------------------------------------
def run_poll(args) -> int:
    from utilitarian import queues
    from utilitarian.app import App
    from utilitarian.commands.common import json_arg

    task_kwargs = json_arg(args.kwargs, "--kwargs", dict)
    config, store = _open(args)
    with store:
        if store.get_meter(args.meter) is None:
            raise UsageError(f"no meter named {args.meter!r} (see `utilitarian meters list`)")
        app = App(config, name="utilitarian poll")
        try:
            job = app.send_task("amr.execute_meter_task", kwargs={
                "meter": args.meter, "task_call": args.task_call, "task_kwargs": task_kwargs,
                "execution_type": args.execution_type}, queue=queues.AMR_ON_DEMAND)
        finally:
            app.close()
        print(job, flush=True)
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            run = store.get_run(job)
            if run is not None and run.outcome != "pending":
                print(f"{run.outcome} in {run.duration or 0:.2f}s after {run.attempts} attempt(s)"
                      + (f": {run.error}" if run.error else ""))
                return EX_OK if run.outcome == "done" else EX_FAILURE
            time.sleep(0.2)
    print(f"no outcome within {args.wait:g}s (is a worker consuming amr.on_demand and commits?)", file=sys.stderr)
    return EX_TEMPFAIL
