"""The clock-driven supervision rules, run by `Supervisor.step` after a turn's events: heartbeat
murder (SIGABRT, then SIGKILL until reaped), memory readings, exit-when-idle, the stop deadline,
and sd_notify (READY once, STATUS, WATCHDOG only while healthy)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from utilitarian.errors import EX_OK
from utilitarian.supervisor import events as ev
from utilitarian.supervisor.events import ERROR, INFO, WARNING, log
from utilitarian.supervisor.records import State

if TYPE_CHECKING:
    from utilitarian.supervisor.supervision import Supervisor


def check_heartbeats(sup: Supervisor, now: float) -> None:
    timeout = sup.limits.heartbeat_timeout
    for rec in sup.children.values():
        if rec.kill_at is not None:
            if now - rec.kill_at >= sup.limits.kill_after_abort:
                rec.kill_at = now  # resend KILL every interval until reaped
                sup.emit(ev.Kill(rec.cid, signal.SIGKILL))
        elif rec.abort_at is not None:
            if now - rec.abort_at >= sup.limits.kill_after_abort:
                sup.emit(log(ERROR, "child %s ignored SIGABRT; sending SIGKILL", rec.label))
                rec.kill_at = now
                sup.emit(ev.Kill(rec.cid, signal.SIGKILL))
        elif now - rec.last_seen > timeout and rec.can_move(State.ABORTED):
            sup.emit(log(ERROR, "child %s silent for %.1fs (heartbeat timeout %.1fs); SIGABRT dumps its stacks, "
                                "then it is replaced", rec.label, now - rec.last_seen, timeout))
            rec.abort_at = now
            sup.owe(rec, "heartbeat")
            rec.move(State.ABORTED)
            sup.emit(ev.Kill(rec.cid, signal.SIGABRT))


def check_memory(sup: Supervisor, now: float) -> None:
    if now - sup.last_rss < sup.limits.rss_interval or not sup.children:
        return
    sup.last_rss = now
    sup.emit(ev.MeasureMemory(tuple(sup.children)))


def check_idle(sup: Supervisor, now: float) -> None:
    limit = sup.limits.exit_when_idle
    if not limit or sup.stop or not sup.children:
        return
    children = sup.children.values()
    if not all(c.ready and c.consuming and c.inflight == 0 and not c.pending_later for c in children):
        return
    idle = min(c.idle for c in children)
    if idle >= limit:
        sup.begin_stop(now, "graceful", EX_OK, f"queues empty and nothing in flight for {idle:.0f}s: "
                                               "exiting when idle")


def enforce_stop_deadline(sup: Supervisor, now: float) -> None:
    if now < sup.stop_deadline:
        return
    for rec in sup.children.values():
        if rec.kill_at is None:
            sup.emit(log(WARNING, "child %s still running at the stop deadline; SIGKILL (its unacked messages "
                                  "will be redelivered)", rec.label))
            rec.kill_at = now
            sup.emit(ev.Kill(rec.cid, signal.SIGKILL))


def check_notify(sup: Supervisor, now: float) -> None:
    if now - sup.last_sample >= sup.limits.sample_interval:
        sup.last_sample = now
        sup.stats.sample(now)
    if not sup.notify_enabled:
        return
    if not sup.announced_ready and not sup.stop:
        wanted = sup.wanted()
        if sup.running() >= wanted:
            sup.announced_ready = True
            sup.emit(ev.Notify("ready", sup.status_line()))
            sup.emit(log(INFO, "all %d children consuming: ready", wanted))
    if now - sup.last_status >= sup.limits.status_interval:
        sup.last_status = now
        sup.emit(ev.Notify("status", sup.status_line()))
    interval = sup.watchdog_interval
    if interval and now - sup.last_watchdog >= interval and healthy(sup, now):
        sup.last_watchdog = now
        sup.emit(ev.Notify("watchdog"))


def healthy(sup: Supervisor, now: float) -> bool:
    """The watchdog is fed only while the loop turns and no child is silent too long."""
    return all(now - c.last_seen <= sup.limits.heartbeat_timeout for c in sup.children.values())
