"""The master's supervision rules, pure: `Supervisor.step(now, events) -> actions` keeps child
states, respawn backoff, the crash-loop limit, retire-and-replace and stop modes; the exit-code
contract is in exits.py, the clock-driven duties in duties.py. No clock, process or socket here."""

from __future__ import annotations

import collections
import dataclasses
import signal

from utilitarian.errors import EX_CONFIG, EX_OK, EX_SOFTWARE
from utilitarian.supervisor import events as ev
from utilitarian.supervisor import commands, duties, exits
from utilitarian.supervisor.events import ERROR, INFO, WARNING, log
from utilitarian.supervisor.plan import WorkerPlan
from utilitarian.supervisor.records import (ACTIVE, CAUSES, CHILD_COUNTERS, ChildRecord, Limits, PoolRecord,
                                            State, as_float, as_int)
from utilitarian.supervisor.stats import Aggregate
from utilitarian.telemetry import Merged


class Supervisor:
    def __init__(self, plan: WorkerPlan, worker, now: float, *, notify: bool = False,
                 watchdog_interval: float | None = None, can_reload: bool = False):
        self.plan = plan
        self.worker = worker  # config.worker
        self.limits = Limits.of(plan, worker)
        self.notify_enabled = notify
        self.watchdog_interval = watchdog_interval
        self.can_reload = can_reload
        self.pools: dict[str, PoolRecord] = {p.name: PoolRecord(p) for p in plan.pools}
        self.children: dict[int, ChildRecord] = {}
        self.stats = Aggregate()
        self.telemetry = Merged()  # metrics task code counted in the children (AMR polls, readings...)
        self.retired_counters: collections.Counter = collections.Counter()
        self.restarts: collections.Counter = collections.Counter()  # by cause, every pool
        self.crash_times: list[float] = []
        self.drained: set[str] = set()  # queues no pool consumes until resumed (`utilitarian control drain`)
        self.ever_ready = False  # any child ready since the master started: 78 is no longer a boot failure
        self.stop: str | None = None  # None | "graceful" | "quick"
        self.stop_deadline = float("inf")
        self.exit_code = EX_OK
        self.exited = False
        self.started = now
        self.next_cid = 1
        self.announced_ready = False
        # The last HUP's refusal, shown in STATUS= and `utilitarian status` until a reload succeeds:
        # the journal line alone scrolls away while the worker keeps running the old configuration.
        self.reload_error: str | None = None
        self.reloads: collections.Counter = collections.Counter()  # "ok"/"failed": reload_client waits on them
        self.last_rss = self.last_sample = self.last_status = self.last_watchdog = float("-inf")
        self._out: list = []

    # --- the one entry point ----------------------------------------------------------------
    def step(self, now: float, events=()) -> list:
        """Apply what happened, then every periodic rule; returns the actions, in order."""
        self._out = []
        for event in events:
            self.apply(now, event)
        duties.check_heartbeats(self, now)
        if not self.stop:
            self.maintain_pools(now)  # after the heartbeat check: a murdered child's replacement starts now
        duties.check_memory(self, now)
        duties.check_idle(self, now)
        duties.check_notify(self, now)
        if self.stop:
            duties.enforce_stop_deadline(self, now)
            if not self.children and not self.exited:
                self.exited = True
                self._out.append(ev.Exit(self.exit_code))
        out, self._out = self._out, []
        return out

    def started_pid(self, cid: int, pid: int) -> None:
        """The loop carried out a Spawn: the child's pid (for logs and status)."""
        rec = self.children.get(cid)
        if rec is not None:
            rec.pid = pid

    def wake_by(self, now: float) -> float:
        """Seconds until the next rule is due sooner than the loop's own tick (a respawn)."""
        due = [p.spawn_after - now for p in self.pools.values() if p.spawn_after > now]
        return max(0.0, min(due)) if due and not self.stop else float("inf")

    def apply(self, now: float, event) -> None:
        if isinstance(event, ev.SignalReceived):
            self.on_signal(now, event.signum)
        elif isinstance(event, ev.Report):
            rec = self.children.get(event.cid)
            if rec is not None:
                self.on_report(now, rec, event.doc)
        elif isinstance(event, ev.Exited):
            rec = self.children.pop(event.cid, None)
            if rec is not None:
                self.stats.retire(rec.cid)
                self.telemetry.retire(rec.cid)
                for key in CHILD_COUNTERS:
                    self.retired_counters[key] += rec.counters[key]
                self.on_exit(now, rec, event.code)
        elif isinstance(event, ev.MemoryMeasured):
            rec = self.children.get(event.cid)
            if rec is not None:
                self.on_memory(rec, event.rss)
        elif isinstance(event, ev.Reloaded):
            self.on_reloaded(event.plan, event.worker)
        elif isinstance(event, ev.ControlCommand):
            commands.apply_command(self, event)
        elif isinstance(event, ev.ReloadFailed):
            self.reload_error = event.reason
            self.reloads["failed"] += 1
            self.emit(log(ERROR, "reload failed, keeping the running configuration: %s", event.reason))
            self.emit(ev.Notify("ready", self.status_line()))
        else:
            raise TypeError(f"unknown event {event!r}")

    def emit(self, action) -> None:
        self._out.append(action)

    # --- spawning and retiring --------------------------------------------------------------
    def maintain_pools(self, now: float) -> None:
        for pool in self.pools.values():
            members = [c for c in self.children.values() if c.pool == pool.spec.name]
            active = [c for c in members if c.state in ACTIVE]
            extra = len(active) - pool.spec.processes
            if extra > 0:  # TTOU or a smaller pool after reload: the oldest extras drain
                for rec in sorted(active, key=lambda c: c.started)[:extra]:
                    self.retire(rec, "pool shrank", cause="shrink", replace=False)
            # Roll outdated children one at a time: the old one leaves capacity first (its
            # replacement is spawned below), and drains once the replacement is ready.
            outdated = [c for c in members if c.state in ACTIVE and c.generation < pool.generation]
            if outdated and not any(c.state is State.RETIRING for c in members):
                self.retire(min(outdated, key=lambda c: c.started), "configuration reloaded", cause="reload",
                            replace=True)
            missing = pool.spec.processes - sum(1 for c in members if c.state in ACTIVE)
            while missing > 0 and now >= pool.spawn_after:
                self.spawn(now, pool)
                missing -= 1
            if missing <= 0:
                pool.owed.clear()  # e.g. a crash followed by TTOU: nothing is owed any more

    def spawn(self, now: float, pool: PoolRecord) -> ChildRecord:
        rec = ChildRecord(cid=self.next_cid, pool=pool.spec.name, index=pool.next_index, generation=pool.generation,
                          started=now, last_seen=now, boot_may_fail=not self.ever_ready,
                          replaces=pool.owed.popleft() if pool.owed else None)
        self.next_cid += 1
        pool.next_index += 1
        self.children[rec.cid] = rec
        self.emit(ev.Spawn(rec.cid, pool.spec, rec.index, rec.generation, rec.boot_may_fail))
        return rec

    def retire(self, rec: ChildRecord, reason: str, *, cause: str, replace: bool) -> None:
        """Take a child out of capacity. With `replace`, it keeps working until its replacement
        is ready (then TERM: it drains); without, it drains now."""
        if rec.state not in ACTIVE:
            return
        self.emit(log(INFO, "retiring child %s (%s)", rec.label, reason))
        rec.cause = cause
        self.owe(rec, cause)
        if replace:
            rec.move(State.RETIRING)
        else:
            self.drain(rec)

    def drain(self, rec: ChildRecord) -> None:
        rec.move(State.DRAINING)
        self.emit(ev.Kill(rec.cid, signal.SIGTERM))

    # --- what children report ---------------------------------------------------------------
    def on_report(self, now: float, rec: ChildRecord, doc: dict) -> None:
        rec.last_seen = now
        kind = doc.get("e")
        if kind == "hb":
            if rec.take_heartbeat(doc):
                self.stats.update(rec.cid, rec.stats)
            if rec.telemetry is not None:
                self.telemetry.update(rec.cid, rec.telemetry)
        elif kind == "ready":
            self.on_ready(rec, doc)
        elif kind == "consuming":
            rec.consuming, rec.why = True, None
        elif kind == "retire":
            self.on_retire_request(rec, str(doc.get("reason") or "?"), bool(doc.get("drain_now")))
        elif kind == "boot_failed":
            rec.boot_failure = as_int(doc.get("code")) or EX_CONFIG
            if self.ever_ready:
                self.emit(log(WARNING, "child %s cannot connect: %s (the worker was ready before: a transient broker "
                                       "state, it will be respawned)", rec.label, doc.get("reason")))
            else:
                self.emit(log(ERROR, "child %s cannot start: %s", rec.label, doc.get("reason")))

    def on_ready(self, rec: ChildRecord, doc: dict) -> None:
        rec.ready = rec.consuming = True
        rec.why = None
        self.ever_ready = True
        if rec.state is State.STARTING:
            rec.move(State.RUNNING)
        pool = self.pools.get(rec.pool)
        if pool:
            pool.crashes = 0
        self.emit(log(INFO, "child %s consuming (boot %.3fs)", rec.label, as_float(doc.get("boot"))))
        # A replacement is up: the child it replaces may drain now.
        for other in self.children.values():
            if other.pool == rec.pool and other.state is State.RETIRING:
                self.drain(other)
                break

    def on_retire_request(self, rec: ChildRecord, reason: str, drain_now: bool) -> None:
        """The child asks to be replaced (max tasks reached, a task past its hard limit)."""
        cause = reason if reason in CAUSES else "crash"
        if not drain_now:
            self.retire(rec, reason, cause=cause, replace=True)
        elif rec.state in ACTIVE or rec.state is State.RETIRING:
            self.owe(rec, cause)
            rec.cause = cause
            rec.move(State.DRAINING)  # it stops consuming by itself; no TERM needed
            self.emit(log(INFO, "child %s retires now (%s); spawning its replacement", rec.label, reason))

    def on_memory(self, rec: ChildRecord, rss: int) -> None:
        rec.rss = rss
        pool = self.pools.get(rec.pool)
        limit = pool.spec.max_memory_per_child if pool else 0
        if limit and rss > limit * 1024 * 1024 and rec.state in ACTIVE:
            self.retire(rec, f"RSS {rss / 2**20:.0f} MiB over the limit of {limit:.0f} MiB", cause="max_memory",
                        replace=True)

    # --- exits: the exit-code contract ------------------------------------------------------
    def on_exit(self, now: float, rec: ChildRecord, code: int | None) -> None:
        verdict = exits.judge_exit(rec.label, code, state=rec.state, stopping=self.stop is not None,
                                   boot_failed=rec.boot_failure is not None, ever_ready=self.ever_ready)
        if verdict.outcome == exits.STOP_CONFIG:
            self.begin_stop(now, "quick", EX_CONFIG, verdict.message)
            return
        self.emit(log(verdict.level, "%s", verdict.message))
        if verdict.outcome in (exits.CRASH, exits.HEARTBEAT):
            self.note_crash(now, rec, verdict.outcome)
        elif verdict.outcome == exits.PLANNED and rec.cause in CAUSES:
            self.count_restart(rec, rec.cause)

    def count_restart(self, rec: ChildRecord, cause: str) -> None:
        self.restarts[cause] += 1
        pool = self.pools.get(rec.pool)
        if pool:
            pool.restarts[cause] += 1

    def owe(self, rec: ChildRecord, cause: str) -> None:
        """`rec` leaves its pool's capacity for `cause`: its replacement will say so."""
        pool = self.pools.get(rec.pool)
        if pool is not None and rec.state in ACTIVE and cause in CAUSES:
            pool.owed.append(cause)

    def note_crash(self, now: float, rec: ChildRecord, cause: str) -> None:
        self.owe(rec, cause)
        self.count_restart(rec, cause)
        window = self.limits.crash_loop_window
        self.crash_times = [t for t in self.crash_times if now - t <= window]
        # Only a child that died without finishing a single task counts toward the crash loop: one
        # killed while working (OOM killer, an operator) made progress and is simply replaced.
        if not rec.ready or rec.tasks_finished() == 0:
            self.crash_times.append(now)
        if len(self.crash_times) >= self.limits.crash_loop_limit:
            self.begin_stop(now, "quick", EX_SOFTWARE, f"{len(self.crash_times)} child crashes within {window:.0f}s: "
                                                       "crash loop, stopping")
            return
        pool = self.pools.get(rec.pool)
        if pool is None:
            return
        pool.crashes += 1
        delay = min(self.limits.restart_backoff_max, self.limits.restart_backoff_base * 2 ** (pool.crashes - 1))
        pool.spawn_after = now + delay
        self.emit(log(INFO, "respawning a child of pool %s in %.1fs", rec.pool, delay))

    # --- signals and stop modes -------------------------------------------------------------
    def on_signal(self, now: float, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.begin_stop(now, "graceful", EX_OK, "SIGTERM: draining")
        elif signum == signal.SIGINT:
            if self.stop:
                self.begin_stop(now, "quick", EX_OK, "second SIGINT: quick stop")
            else:
                self.begin_stop(now, "graceful", EX_OK, "SIGINT: draining (send it again to stop at once)")
        elif signum == signal.SIGQUIT:
            self.begin_stop(now, "quick", EX_OK, "SIGQUIT: quick stop")
        elif signum == signal.SIGHUP:
            if not self.stop and self.can_reload:
                self.emit(ev.Notify("reloading"))
                self.emit(ev.LoadConfig())
        elif signum == signal.SIGTTIN:
            self.resize(+1)
        elif signum == signal.SIGTTOU:
            self.resize(-1)
        # SIGCHLD only wakes the loop: the sentinels say who exited

    def begin_stop(self, now: float, mode: str, code: int, why: str) -> None:
        if self.stop == "quick" or self.stop == mode:
            self.exit_code = self.exit_code or code
            return
        self.emit(log(ERROR if code else INFO, "%s", why))
        self.stop = mode
        self.exit_code = self.exit_code or code
        self.emit(ev.Notify("stopping", why))
        sig = signal.SIGTERM if mode == "graceful" else signal.SIGQUIT
        # Children drain within graceful_timeout themselves; the master allows one more second.
        self.stop_deadline = now + (self.limits.graceful_timeout + 1.0 if mode == "graceful"
                                    else self.limits.quick_timeout)
        for rec in self.children.values():
            if rec.can_move(State.STOPPING):
                rec.move(State.STOPPING)
                self.emit(ev.Kill(rec.cid, sig))

    def resize(self, delta: int) -> None:
        if self.stop:
            return
        for name, pool in self.pools.items():
            size = max(1, pool.configured.processes + delta)
            if size != pool.configured.processes:
                self.emit(log(INFO, "pool %s: %d -> %d processes", name, pool.configured.processes, size))
                pool.configure(dataclasses.replace(pool.configured, processes=size), self.drained)
        self.replan()

    def replan(self) -> None:
        """The plan (status, reload comparisons) follows what the pools are configured to run."""
        self.plan = dataclasses.replace(self.plan, pools=tuple(p.configured for p in self.pools.values()))

    def on_reloaded(self, plan: WorkerPlan, worker) -> None:
        self.reloads["ok"] += 1
        if self.stop:
            return
        self.emit(log(INFO, "configuration reloaded; rolling children one by one: %s",
                      "; ".join(f"{p.name} {p.processes}x{p.threads}" for p in plan.pools)))
        self.plan, self.worker, self.limits = plan, worker, Limits.of(plan, worker)
        self.reload_error = None
        new_pools = {p.name: p for p in plan.pools}
        for name in list(self.pools):
            if name not in new_pools:
                for rec in self.children.values():
                    if rec.pool == name:
                        self.retire(rec, "pool removed by reload", cause="shrink", replace=False)
                del self.pools[name]
        for name, spec in new_pools.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = PoolRecord(spec)
            else:
                pool.generation += 1
            pool.configure(spec, self.drained)
        self.emit(ev.Notify("ready", self.status_line()))

    # --- figures ------------------------------------------------------------------------------
    def wanted(self) -> int:
        return sum(p.spec.processes for p in self.pools.values())

    def running(self) -> int:
        return sum(1 for c in self.children.values() if c.ready and c.state in ACTIVE)

    def counter_total(self, key: str) -> int:
        return self.retired_counters[key] + sum(c.counters[key] for c in self.children.values())

    def status_line(self) -> str:
        inflight = sum(c.inflight for c in self.children.values())
        if self.stop:
            return f"stopping ({self.stop}): {len(self.children)} children left, {inflight} in flight"
        t = self.stats.totals()
        line = (f"{self.running()}/{self.wanted()} children, {inflight} in flight, {t['done']} done, "
                f"{t['failed']} failed, {t['retried']} retried, {self.stats.rate():.1f}/s")
        if self.reload_error:
            line += f"; reload failed, old configuration kept: {self.reload_error.splitlines()[0][:200]}"
        return line
