"""`utilitarian schedule show|fire`: the entries with their next fire times (UTC and the entry's
zone), and one fire sent by hand with an id of its own."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from utilitarian.errors import ConfigError, UsageError

UTC = dt.timezone.utc


def register(sub, parent) -> None:
    p = sub.add_parser("schedule", parents=[parent], help="show the beat schedule or fire one entry by hand")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", parents=[parent],
                              help="entries with their next fire times in UTC and in the entry's zone")
    show.add_argument("--json", action="store_true")
    show.add_argument("-n", "--count", type=int, default=5, metavar="N", help="fire times per entry (default 5)")
    show.add_argument("--at", metavar="ISO", help="list fire times after this instant instead of now")
    show.set_defaults(handler=run_show)
    fire = actions.add_parser("fire", parents=[parent], help="send one fire of an entry now (its own task id)")
    fire.add_argument("name", help="schedule entry name, e.g. amr-daily")
    fire.add_argument("--slot", metavar="ISO", help="the slot to pass (default: the entry's latest slot)")
    fire.set_defaults(handler=run_fire)


def _instant(text: str, option: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option} {text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _entries(args):
    from utilitarian.beat.schedule import entries_from_config
    from utilitarian.commands.common import load
    from utilitarian.validation import validate

    config = load(args)
    registry = validate(config)  # exit 78 on what beat would refuse (an unknown task in an enabled entry)
    return config, registry, {e.name: e for e in entries_from_config(config, registry, include_disabled=True)}


def run_show(args) -> int:
    from utilitarian.beat.cron import CronSchedule

    if args.count < 1:
        raise UsageError("--count must be at least 1")
    config, _registry, resolved = _entries(args)
    after = _instant(args.at, "--at") if args.at else dt.datetime.now(UTC)
    rows = []
    for name, raw in sorted(config.schedule.items()):
        cron = CronSchedule(raw.cron, raw.timezone)
        entry = resolved.get(name)
        slots = cron.slots_between(after, dt.datetime.max.replace(tzinfo=UTC), limit=args.count)
        rows.append({
            "name": name, "cron": raw.cron, "timezone": raw.timezone, "task": raw.task,
            "queue": entry.queue if entry else None, "enabled": raw.enabled,
            "misfire_grace": raw.misfire_grace, "coalesce": raw.coalesce, "expires": raw.expires,
            "next": [{"utc": s.isoformat(), "local": s.astimezone(cron.tz).isoformat()} for s in slots],
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "" if row["enabled"] else "  [disabled]"
        policy = f"grace {row['misfire_grace']:g}s, {'coalesce' if row['coalesce'] else 'every missed slot'}"
        print(f"{row['name']}{state}: {row['cron']!r} in {row['timezone']} -> {row['task']} "
              f"on {row['queue'] or '?'} ({policy})")
        for slot in row["next"]:
            local = "" if row["timezone"] == "UTC" else f"   {slot['local']} {row['timezone']}"
            print(f"    {slot['utc']}{local}")
    return 0


def run_fire(args) -> int:
    from utilitarian.app import App, outgoing_for
    from utilitarian.beat.fires import envelope_for, slot_iso

    config, _registry, resolved = _entries(args)
    if args.name not in config.schedule:
        known = ", ".join(sorted(config.schedule)) or "none"
        raise UsageError(f"no schedule entry {args.name!r} (entries: {known})")
    entry = resolved.get(args.name)
    if entry is None:  # a disabled entry whose task is unknown
        raise ConfigError(f"unknown task {config.schedule[args.name].task!r}", file=config.source,
                          key=f"schedule.{args.name}.task")
    now = dt.datetime.now(UTC)
    if args.slot:
        slot = _instant(args.slot, "--slot")
    else:
        latest = entry.cron.slots_before(now, now - dt.timedelta(days=400), limit=1)
        slot = latest[-1] if latest else now.replace(microsecond=0)
    envelope = envelope_for(entry, slot, task_id=str(uuid.uuid4()), manual=True)
    app = App(config, name="utilitarian schedule fire")
    try:
        app.publisher.publish(outgoing_for(envelope, entry.queue, now))
    finally:
        app.close()
    print(f"{envelope.task_id} {entry.name} slot {slot_iso(slot)} -> {entry.queue}")
    return 0
