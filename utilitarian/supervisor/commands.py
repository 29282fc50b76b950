"""Operators' changes to a running worker (`utilitarian control grow|shrink|drain|resume`), pure:
`check_command` turns a request into a ControlCommand or a clear error (nothing changes then),
`apply_command` carries an accepted one out on the supervision state; the pools' children follow
by the usual rules (spawn, retire, roll one at a time)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from utilitarian import queues as q
from utilitarian.supervisor import events as ev
from utilitarian.supervisor.events import INFO, log

if TYPE_CHECKING:
    from utilitarian.supervisor.supervision import Supervisor

MAX_PROCESSES = 256  # as `processes` in the TOML


def check_command(sup: Supervisor, request: dict) -> tuple[str | None, ev.ControlCommand | None]:
    cmd = request.get("cmd")
    if sup.stop:
        return f"the worker is stopping ({sup.stop}); nothing changed", None
    if cmd in ("grow", "shrink"):
        return _check_resize(sup, cmd, request.get("pool"), request.get("n"))
    if cmd in ("drain", "resume"):
        return _check_queue(sup, cmd, request.get("queue"))
    return f"unknown command {cmd!r}", None


def _check_resize(sup: Supervisor, cmd: str, pool, n) -> tuple[str | None, ev.ControlCommand | None]:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"{cmd}: N must be a whole number of processes, at least 1 (got {n!r})", None
    record = sup.pools.get(pool) if isinstance(pool, str) else None
    if record is None:
        return f"no pool {pool!r} in worker {sup.plan.name} (pools: {', '.join(sorted(sup.pools))})", None
    size = record.configured.processes + (n if cmd == "grow" else -n)
    if size < 1:
        return (f"pool {pool} has {record.configured.processes} process(es) and keeps at least 1: "
                "drain its queues to stop it consuming"), None
    if size > MAX_PROCESSES:
        return f"pool {pool} would have {size} processes, over the limit of {MAX_PROCESSES}", None
    return None, ev.ControlCommand(cmd, pool=pool, n=n)


def _check_queue(sup: Supervisor, cmd: str, name) -> tuple[str | None, ev.ControlCommand | None]:
    full = q.resolve(name) if isinstance(name, str) else None
    if full is None:
        return f"{cmd}: {q.check_queue(name) if isinstance(name, str) else 'a queue name is required'}", None
    if not any(full in p.configured.queues for p in sup.pools.values()):
        return f"worker {sup.plan.name} does not consume {full}", None
    return None, ev.ControlCommand(cmd, queue=full)


def apply_command(sup: Supervisor, command: ev.ControlCommand) -> None:
    if sup.stop:
        return
    if command.cmd in ("grow", "shrink"):
        pool = sup.pools.get(command.pool)
        if pool is None:  # removed by a reload since it was checked
            return
        size = pool.configured.processes + (command.n if command.cmd == "grow" else -command.n)
        size = max(1, min(MAX_PROCESSES, size))
        sup.emit(log(INFO, "control: pool %s %d -> %d processes", command.pool, pool.configured.processes, size))
        pool.configure(dataclasses.replace(pool.configured, processes=size), sup.drained)
    else:
        if command.cmd == "drain":
            sup.drained.add(command.queue)
        else:
            sup.drained.discard(command.queue)
        sup.emit(log(INFO, "control: %s %s; rolling the pools that consume it", command.cmd, command.queue))
        for pool in sup.pools.values():
            if pool.configure(pool.configured, sup.drained):
                pool.generation += 1  # its children are rolled to the new queue set, one at a time
    sup.replan()


def describe(command: ev.ControlCommand) -> str:
    if command.cmd in ("grow", "shrink"):
        return f"{command.cmd} pool {command.pool} by {command.n}"
    return f"{command.cmd} {command.queue}"
