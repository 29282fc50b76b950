"""Checks of AMR tasks where the operator types them (`amr-tasks add`, `meters import`,
`config check`): the execution type, task_call and kwargs a worker would accept, the run offset
within the schedule's period, and that a task fits the meters it is attached to. Pure: each check
returns the problems as text naming what is wrong; nothing here writes.
"""

from __future__ import annotations

from typing import Iterable

from utilitarian.amr.model import AmrTask

# Seconds between two runs of each schedule (the shortest month and year): the platform documents
# run_offset_seconds as at most the time until the next run.
SCHEDULE_PERIODS = {"quarterly": 900.0, "hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0,
                    "monthly": 28 * 86400.0, "yearly": 365 * 86400.0}


def check_run_offset(schedule: str, offset) -> str | None:
    period = SCHEDULE_PERIODS.get(schedule)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or offset != offset:
        return "run_offset_seconds: must be a number of seconds"
    if offset < 0:
        return "run_offset_seconds: must not be negative"
    if period is not None and offset > period:
        return (f"run_offset_seconds: {offset:g} s is more than the {schedule} schedule's period "
                f"({period:g} s): the task would run after the next round started")
    return None


def check_task(task: AmrTask) -> list[str]:
    """Problems of one AMR task (execution type, task_call, kwargs, schedule, offset)."""
    from utilitarian.amr.environments import validate_task_call
    from utilitarian.amr.errors import BadTaskCall

    problems = []
    if task.schedule not in SCHEDULE_PERIODS:
        problems.append(f"schedule: {task.schedule!r} is not one of {', '.join(SCHEDULE_PERIODS)}")
    elif (offset := check_run_offset(task.schedule, task.run_offset_seconds)) is not None:
        problems.append(offset)
    try:
        validate_task_call(task.meter_execution_type, task.task_call, task.task_kwargs)
    except BadTaskCall as exc:
        problems.append(exc.message)
    return problems


def check_attachment(task: AmrTask, meter_name: str, meter_execution_type: str, protocol: str | None) -> str | None:
    """Why `task` cannot run on that meter (None if it can). Before, such a task was silently
    left out of every round."""
    from utilitarian.amr.environments import canonical_execution_type, protocols_of
    from utilitarian.amr.errors import BadTaskCall

    task_type = canonical_execution_type(task.meter_execution_type)
    if task_type != canonical_execution_type(meter_execution_type):
        return (f"AMR task {task.name!r} is for {task.meter_execution_type} but meter {meter_name!r} "
                f"is {meter_execution_type}")
    try:
        drives = protocols_of(task_type)
    except BadTaskCall:
        return None  # an unknown execution type is reported by check_task
    if protocol is not None and protocol not in drives:
        return f"AMR task {task.name!r} ({task_type}) cannot drive meter {meter_name!r} ({protocol})"
    return None


def check_attachments(tasks: dict[str, AmrTask], links: Iterable[tuple[str, str, str, str | None]]) -> list[str]:
    """links: (meter name, its execution type, its protocol, task name)."""
    out = []
    for meter, etype, protocol, task_name in links:
        task = tasks.get(task_name)
        if task is not None and (problem := check_attachment(task, meter, etype, protocol)):
            out.append(problem)
    return out


def check_store_registry(store) -> list[str]:
    """Problems of the AMR tasks in a store and of their attachments to meters (`config check`)."""
    from utilitarian.amr.target import parse_meter_url
    from utilitarian.errors import ConfigError

    tasks = {t.name: t for t in store.list_amr_tasks()}
    problems = [f"AMR task {t.name!r}: {p}" for t in tasks.values() for p in check_task(t)]
    meters = {m.name: m for m in store.list_meters()}
    links = []
    for meter_name, task_names in store.meter_tasks().items():
        meter = meters.get(meter_name)
        if meter is None:
            continue
        try:
            protocol = parse_meter_url(meter.url).protocol
        except ConfigError:
            protocol = None
        links += [(meter_name, meter.execution_type, protocol, t) for t in task_names]
    return problems + check_attachments(tasks, links)


def check_config_registry(config) -> list[str]:
    """For `config check`: the problems of the AMR tasks in the store the config names (an
    unknown execution type or task_call, bad kwargs, an offset past the period, a task attached
    to meters it cannot run on). A store that cannot be opened or is not migrated is not checked
    here (workers report it at first use; `utilitarian db migrate` fixes it)."""
    from utilitarian.amr.store import store_for_config
    from utilitarian.errors import UtilitarianError

    try:
        store = store_for_config(config)
    except UtilitarianError:
        return []
    with store:
        return check_store_registry(store)
