"""The schedules every installation has: the AMR rounds (UTC, as the platform runs them) and
the daily cleanup. `[schedule.<name>]` tables in the TOML override keys of these or disable them."""

from __future__ import annotations

from utilitarian import queues

# misfire_grace: how late a round may still start after downtime; bigger rounds tolerate more.
_AMR = {
    "quarterly": ("*/15 * * * *", 600.0),
    "hourly": ("0 * * * *", 1800.0),
    "daily": ("0 0 * * *", 6 * 3600.0),
    "weekly": ("0 0 * * 1", 24 * 3600.0),
    "monthly": ("0 0 1 * *", 3 * 86400.0),
    "yearly": ("0 0 1 1 *", 7 * 86400.0),
}

BUILTIN_SCHEDULES: dict[str, dict] = {
    f"amr-{name}": {
        "cron": cron,
        "task": "amr.dispatch_schedule",
        "kwargs": {"schedule": name},
        "queue": queues.AMR,
        "timezone": "UTC",
        "misfire_grace": grace,
        "coalesce": True,
        "slot_kwarg": "slot",
    }
    for name, (cron, grace) in _AMR.items()
}
BUILTIN_SCHEDULES["cleanup-retention"] = {
    "cron": "15 3 * * *", "task": "cleanup.apply_retention", "queue": queues.CLEANUP,
    "misfire_grace": 12 * 3600.0, "coalesce": True,
}
BUILTIN_SCHEDULES["cleanup-interface-blocks"] = {
    "cron": "*/5 * * * *", "task": "cleanup.release_stale_blocks", "queue": queues.CLEANUP,
    "misfire_grace": 300.0, "coalesce": True,
}
BUILTIN_SCHEDULES["cleanup-publish-outbox"] = {
    "cron": "*/5 * * * *", "task": "cleanup.publish_outbox", "queue": queues.CLEANUP,
    "misfire_grace": 300.0, "coalesce": True,
}


def merged_schedule_tables(raw_config: dict) -> dict:
    """Built-in entries with the site's tables merged key by key (unless builtins are off)."""
    site = raw_config.get("schedule")
    if not isinstance(site, dict):
        return site if site is not None else ({} if _builtins_off(raw_config) else _copy())
    if _builtins_off(raw_config):
        return site
    merged = _copy()
    for name, table in site.items():
        if name in merged and isinstance(table, dict):
            merged[name].update(table)
        else:
            merged[name] = table
    return merged


def _builtins_off(raw_config: dict) -> bool:
    beat = raw_config.get("beat")
    return isinstance(beat, dict) and beat.get("builtin_schedules") is False


def _copy() -> dict:
    return {name: dict(table) for name, table in BUILTIN_SCHEDULES.items()}
