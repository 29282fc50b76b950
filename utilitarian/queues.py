"""The 14 task queues (the platform's external contract) and the names derived from them."""

from __future__ import annotations

PREFIX = "utilitarian.tasks"

DEFAULT = f"{PREFIX}.default"
AMR = f"{PREFIX}.amr"
AMR_QUARTERLY = f"{PREFIX}.amr.scheduled.quarterly"
AMR_HOURLY = f"{PREFIX}.amr.scheduled.hourly"
AMR_DAILY = f"{PREFIX}.amr.scheduled.daily"
AMR_MONTHLY = f"{PREFIX}.amr.scheduled.monthly"
AMR_YEARLY = f"{PREFIX}.amr.scheduled.yearly"
AMR_ON_DEMAND = f"{PREFIX}.amr.on_demand"
COMMITS = f"{PREFIX}.commits"
COMMITS_READINGS = f"{PREFIX}.commits.meter_readings"
COMMITS_EVENTS = f"{PREFIX}.commits.meter_system_events"
EXTERNAL = f"{PREFIX}.external"
EXTERNAL_PUBLISH = f"{PREFIX}.external.publish"
CLEANUP = f"{PREFIX}.cleanup"

QUEUES: tuple[str, ...] = (
    DEFAULT, AMR, AMR_QUARTERLY, AMR_HOURLY, AMR_DAILY, AMR_MONTHLY, AMR_YEARLY, AMR_ON_DEMAND,
    COMMITS, COMMITS_READINGS, COMMITS_EVENTS, EXTERNAL, EXTERNAL_PUBLISH, CLEANUP,
)

# Where refused messages and tasks past their last retry wait for an operator (`utilitarian dlq`).
DEAD_LETTER = f"{PREFIX}.dead"

# Schedules and the queue their meter jobs run on. Weekly has no queue of its own in the
# platform's contract: its jobs are as heavy as daily ones, so they share the daily queue.
SCHEDULE_QUEUES: dict[str, str] = {
    "quarterly": AMR_QUARTERLY,
    "hourly": AMR_HOURLY,
    "daily": AMR_DAILY,
    "weekly": AMR_DAILY,
    "monthly": AMR_MONTHLY,
    "yearly": AMR_YEARLY,
}


def short_name(queue: str) -> str:
    """`utilitarian.tasks.amr.scheduled.daily` -> `amr.scheduled.daily` (for tables and logs)."""
    return queue[len(PREFIX) + 1:] if queue.startswith(PREFIX + ".") else queue


def resolve(name: str) -> str | None:
    """Accept a full queue name or its short form; None when it is not one of ours."""
    if name in QUEUES:
        return name
    full = f"{PREFIX}.{name}"
    return full if full in QUEUES else None


def check_queue(name: str) -> str | None:
    """Config check: an error text for a name that is not one of the 14 queues."""
    if resolve(name):
        return None
    import difflib

    close = difflib.get_close_matches(name, list(QUEUES), n=1, cutoff=0.6)
    return f"unknown queue {name!r}" + (f"; did you mean {close[0]!r}?" if close else "; see `utilitarian topology show`")
