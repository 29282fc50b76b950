"""AMR's metrics, counted in the worker children that run its tasks (utilitarian.telemetry carries
them to the master's metrics page): polls by protocol and outcome, poll latency, failures by kind,
readings committed, system events by kind, jobs waiting for a blocking interface, and the latest
round of each schedule as read from the store (the `utilitarian.metrics_collectors` plugin)."""

from __future__ import annotations

import datetime as dt

from utilitarian import telemetry

UTC = dt.timezone.utc
POLLS = telemetry.counter("amr_polls_total", "Meter polls finished, by protocol (execution environment) and "
                          "outcome (done, failed, retried).", ("protocol", "outcome"))
POLL_FAILURES = telemetry.counter("amr_poll_failures_total", "Failed poll attempts by protocol and error kind "
                                  "(timeout, connection, protocol, ...; retried ones included).", ("protocol", "kind"))
POLL_SECONDS = telemetry.histogram("amr_poll_duration_seconds", "Time from the start of a job to its result "
                                   "(interface wait and meter session), by protocol.", ("protocol",))
READINGS = telemetry.counter("amr_readings_committed_total", "Readings written by commits, by result (inserted, "
                             "changed, unchanged, staged, rejected).", ("result",))
EVENTS = telemetry.counter("amr_events_total", "Meter system events produced, by kind (poll_failed: ours after a "
                           "failed poll; meter: read from the meter).", ("kind",))
BLOCK_WAITS = telemetry.gauge("amr_interface_blocks_waiting", "Jobs waiting now for a blocking network "
                              "interface another job holds.")
BLOCK_WAITS.set(value=0)  # shown as 0, not absent, before the first wait (alerts and dashboards need it)
DISPATCHED = telemetry.counter("amr_rounds_dispatched_total", "Rounds dispatched, by schedule.", ("schedule",))
ROUND_JOBS = telemetry.gauge("amr_round_jobs", "Jobs of the latest round of a schedule, by state (total, done, "
                             "failed, pending).", ("schedule", "state"), merge="max")
ROUND_SLOT = telemetry.gauge("amr_round_slot_timestamp_seconds", "Slot of the latest round of a schedule.",
                             ("schedule",), merge="max")
ROUND_NEXT = telemetry.gauge("amr_round_next_slot_timestamp_seconds", "The schedule's slot after that of its latest "
                             "round: the round should be finished by then.", ("schedule",), merge="max")
ROUND_SECONDS = telemetry.gauge("amr_round_duration_seconds", "Dispatch to last finished job of the latest round "
                                "(still running: to now).", ("schedule",), merge="max")
SCHEDULE_CRON = {"quarterly": "*/15 * * * *", "hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1",
                 "monthly": "0 0 1 * *", "yearly": "0 0 1 1 *"}


def protocol_of(execution_type: str | None) -> str:
    """A bounded label: the execution environment's name, without the `generic_` prefix."""
    return str(execution_type).removeprefix("generic_") if execution_type else "unknown"


def next_slot(schedule: str, slot: dt.datetime) -> dt.datetime | None:
    cron = SCHEDULE_CRON.get(schedule)
    if cron is None:
        return None
    from croniter import croniter

    return croniter(cron, slot.astimezone(UTC)).get_next(dt.datetime)


def set_round_gauges(rounds, now: dt.datetime) -> None:
    """The latest round of each schedule among `rounds` (RoundProgress, newest first)."""
    seen = set()
    for r in rounds:
        if r.schedule in seen:
            continue
        seen.add(r.schedule)
        for state, n in (("total", r.jobs), ("done", r.done), ("failed", r.failed), ("pending", r.pending)):
            ROUND_JOBS.set(r.schedule, state, value=n)
        ROUND_SLOT.set(r.schedule, value=r.slot.timestamp())
        upcoming = next_slot(r.schedule, r.slot)
        if upcoming is not None:
            ROUND_NEXT.set(r.schedule, value=upcoming.timestamp())
        elapsed = r.elapsed_seconds if r.finished else (now - r.dispatched_at).total_seconds()
        ROUND_SECONDS.set(r.schedule, value=max(0.0, elapsed or 0.0))


def collect_round_metrics(app, queues) -> None:
    """The `utilitarian.metrics_collectors` plugin: children that serve a schedule's meter queue read
    its latest round from the store (on the collector thread, never the pump)."""
    from utilitarian import queues as q

    served = set(queues)
    schedules = {name for name, queue in q.SCHEDULE_QUEUES.items() if queue in served}
    if not schedules:
        return  # before the imports: a child of other queues never loads the progress queries
    from utilitarian.amr.progress import round_progress
    from utilitarian.amr.store import store_for

    now = dt.datetime.now(UTC)
    rounds = [r for r in round_progress(store_for(app), now, limit=20) if r.schedule in schedules]
    set_round_gauges(rounds, now)


def count_committed(result) -> None:
    """A store CommitResult into `amr_readings_committed_total`, wherever the commit ran (a commit
    task, or the polling process committing its group's results itself)."""
    for outcome in ("inserted", "changed", "unchanged", "staged", "rejected"):
        if getattr(result, outcome, 0):
            READINGS.inc(outcome, n=getattr(result, outcome))
