"""The pre-fork master: spawns the children of each pool and keeps them so. Single-threaded, no
broker connection; it waits on child sentinels, their status pipes, a signal wake-up pipe and its
control socket, and acts in its loop (signal handlers only record)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field

from utilitarian.errors import EX_CONFIG, EX_SOFTWARE
from utilitarian.supervisor.child import ChildSpec, child_main
from utilitarian.supervisor.heartbeat import StatusReader
from utilitarian.supervisor.plan import PoolSpec, WorkerPlan
from utilitarian.supervisor.signals import SignalQueue
from utilitarian.supervisor.stats import Aggregate, totals_of

log = logging.getLogger(__name__)
TICK = 0.25
KILL_AFTER_ABORT = 5.0  # a child that ignored SIGABRT this long gets SIGKILL
RSS_INTERVAL = 5.0
QUICK_TIMEOUT = 5.0
STATES = ("starting", "running", "retiring", "draining", "stopping")


@dataclass(eq=False)
class ChildHandle:
    pool: str
    generation: int
    process: multiprocessing.Process
    reader: StatusReader
    started: float
    state: str = "starting"  # starting, running, retiring (replacement coming), draining, stopping
    ready: bool = False
    last_seen: float = 0.0
    stats: dict = field(default_factory=dict)
    inflight: int = 0
    idle: float = 0.0
    pending_later: bool = False  # its idle probes say work for its queues is due later
    consuming: bool = False
    rss: int | None = None
    abort_sent: float | None = None
    expected_exit: bool = False
    boot_failure: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def active(self) -> bool:
        """Counts toward the pool's capacity: not on its way out."""
        return self.state in ("starting", "running")


@dataclass
class PoolState:
    spec: PoolSpec
    generation: int = 0
    next_index: int = 0
    crashes: int = 0  # consecutive unexpected exits, for the respawn backoff
    spawn_after: float = 0.0


class Arbiter:
    def __init__(self, plan: WorkerPlan, *, config, registry, settings, loglevel: str, reload=None,
                 notifier=None, control_path: str | None = None, metrics=None):
        self.plan = plan
        self.config = config
        self.registry = registry
        self.settings = settings
        self.loglevel = loglevel
        self.reload_fn = reload  # () -> (plan, config, settings); raises on a bad file
        self.notifier = notifier
        self.control_path = control_path
        self.control = None
        self.metrics = metrics
        self.signals = SignalQueue()
        self.pools: dict[str, PoolState] = {p.name: PoolState(p) for p in plan.pools}
        self.children: dict[int, ChildHandle] = {}
        self.stats = Aggregate()
        self.stop_mode: str | None = None  # None | "graceful" | "quick"
        self.stop_deadline = float("inf")
        self.exit_code = 0
        self.restarts = 0
        self.crash_times: list[float] = []
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.announced_ready = False
        self.last_rss = 0.0
        self.last_status = 0.0
        self.last_watchdog = 0.0
        self.last_sample = 0.0
        self.ctx = multiprocessing.get_context("fork")

    # --- lifecycle -------------------------------------------------------------------------
    def run(self) -> int:
        self.signals.install()
        if self.control_path:
            from utilitarian.supervisor.control import ControlServer

            self.control = ControlServer(self.control_path)
        log.info("worker %s starting: %s", self.plan.name, self.describe_plan())
        try:
            while True:
                self.maintain_pools()
                objects = [self.signals.wake_r]
                objects += [c.process.sentinel for c in self.children.values()]
                objects += [c.reader.fd for c in self.children.values()]
                if self.control:
                    objects.append(self.control)
                if self.metrics:
                    objects.append(self.metrics)
                ready = multiprocessing.connection.wait(objects, timeout=TICK)
                if self.signals.wake_r in ready:
                    self.signals.drain_wakeups()
                for signum in self.signals.pop_all():
                    self.handle_signal(signum)
                self.read_status()
                self.reap_children()
                if self.control and self.control in ready:
                    self.control.handle(self.answer)
                if self.metrics and self.metrics in ready:
                    self.metrics.handle(self.render_metrics)
                now = time.monotonic()
                self.check_heartbeats(now)
                self.check_rss(now)
                self.check_idle(now)
                self.notify(now)
                if self.stop_mode:
                    self.enforce_stop_deadline(now)
                    if not self.children:
                        break
        except Exception:  # the master must not die with children left behind
            log.exception("master loop failed; killing children")
            self.exit_code = EX_SOFTWARE
            for child in self.children.values():
                self.kill(child, signal.SIGKILL)
        finally:
            if self.notifier:
                self.notifier.stopping("stopped")
            if self.control:
                self.control.close()
            if self.metrics:
                self.metrics.close()
        log.info("worker %s stopped (exit %d)", self.plan.name, self.exit_code)
        return self.exit_code

    def describe_plan(self) -> str:
        return "; ".join(f"pool {p.name}: {p.processes}x{p.threads} on "
                         f"{', '.join(q.removeprefix('utilitarian.tasks.') for q in p.queues)}"
                         for p in self.plan.pools)

    # --- spawning --------------------------------------------------------------------------
    def maintain_pools(self) -> None:
        if self.stop_mode:
            return
        now = time.monotonic()
        for pool in self.pools.values():
            members = [c for c in self.children.values() if c.pool == pool.spec.name]
            active = [c for c in members if c.active]
            missing = pool.spec.processes - len(active)
            while missing > 0 and now >= pool.spawn_after:
                self.spawn_child(pool)
                missing -= 1
            if missing < 0:  # TTOU or a smaller pool after reload: retire the oldest extras
                for child in sorted(active, key=lambda c: c.started)[:-missing]:
                    self.retire(child, "pool shrank", replace=False)
            # Roll outdated children one at a time: a replacement first, then the old one drains.
            waiting = [c for c in members if c.state == "retiring"]
            outdated = [c for c in active if c.generation < pool.generation]
            if outdated and not waiting:
                self.retire(min(outdated, key=lambda c: c.started), "configuration reloaded", replace=True)

    def spawn_child(self, pool: PoolState) -> ChildHandle:
        index = pool.next_index
        pool.next_index += 1
        spec = ChildSpec(worker_name=self.plan.name, pool=pool.spec, index=index, config=self.config,
                         registry=self.registry, settings=self.settings,
                         graceful_timeout=self.plan.graceful_timeout, loglevel=self.loglevel,
                         probe_pending=bool(self.plan.exit_when_idle))
        r_fd, w_fd = os.pipe()
        close_fds = [r_fd, self.signals.wake_r, self.signals.wake_w]
        close_fds += [c.reader.fd for c in self.children.values()]
        for server in (self.control, self.metrics):
            if server is not None:
                close_fds.append(server.fileno())
        process = self.ctx.Process(target=child_main, args=(spec, w_fd, close_fds, self.signals.uninstall_in_child),
                                   name=f"{pool.spec.name}-{index}", daemon=False)
        process.start()
        os.close(w_fd)
        now = time.monotonic()
        child = ChildHandle(pool.spec.name, pool.generation, process, StatusReader(r_fd), now, last_seen=now)
        self.children[process.pid] = child
        log.info("spawned child %d (pool %s, %d threads)", process.pid, pool.spec.name, pool.spec.threads)
        return child

    def retire(self, child: ChildHandle, reason: str, *, replace: bool) -> None:
        """Take a child out of capacity. With `replace`, it keeps working until its replacement
        is ready (then TERM: it drains); without, it drains now."""
        if not child.active:
            return
        log.info("retiring child %d (%s)", child.pid, reason)
        if replace:
            child.state = "retiring"
        else:
            self.drain(child)

    def drain(self, child: ChildHandle) -> None:
        child.state = "draining"
        child.expected_exit = True
        self.kill(child, signal.SIGTERM)

    def kill(self, child: ChildHandle, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    # --- child reports -----------------------------------------------------------------------
    def read_status(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            for doc in child.reader.read():
                child.last_seen = now
                event = doc.get("e")
                if event == "hb":
                    child.stats = doc.get("stats") or child.stats
                    self.stats.update(child.pid, child.stats)
                    child.inflight = int(doc.get("inflight") or 0)
                    child.idle = float(doc.get("idle") or 0.0)
                    child.pending_later = bool(doc.get("pending_later"))
                    child.consuming = bool(doc.get("consuming"))
                elif event == "ready":
                    self.on_child_ready(child, doc)
                elif event == "consuming":
                    child.consuming = True
                elif event == "retire":
                    reason = doc.get("reason", "?")
                    if doc.get("drain_now"):
                        child.state = "draining"
                        child.expected_exit = True
                        log.info("child %d retires now (%s); spawning its replacement", child.pid, reason)
                    else:
                        self.retire(child, reason, replace=True)
                elif event == "boot_failed":
                    child.boot_failure = int(doc.get("code") or EX_CONFIG)
                    log.error("child %d cannot start: %s", child.pid, doc.get("reason"))

    def on_child_ready(self, child: ChildHandle, doc: dict) -> None:
        child.ready = True
        child.consuming = True
        if child.state == "starting":
            child.state = "running"
        pool = self.pools.get(child.pool)
        if pool:
            pool.crashes = 0
        log.info("child %d consuming (boot %.3fs)", child.pid, float(doc.get("boot") or 0))
        # A replacement is up: the child it replaces may drain now.
        for other in self.children.values():
            if other.pool == child.pool and other.state == "retiring":
                self.drain(other)
                break

    def reap_children(self) -> None:
        for pid, child in list(self.children.items()):
            if child.process.exitcode is None and child.process.is_alive():
                continue
            child.process.join(0)
            code = child.process.exitcode
            for doc in child.reader.read():  # last words, e.g. a final heartbeat
                if doc.get("e") == "hb" and doc.get("stats"):
                    child.stats = doc["stats"]
                    self.stats.update(pid, child.stats)
                elif doc.get("e") == "boot_failed":
                    child.boot_failure = int(doc.get("code") or EX_CONFIG)
            child.reader.close()
            del self.children[pid]
            self.stats.retire(pid)
            self.on_child_exit(child, code)

    def on_child_exit(self, child: ChildHandle, code: int | None) -> None:
        expected = child.expected_exit or self.stop_mode is not None
        if code is not None and code < 0:
            sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            if -code == signal.SIGKILL and not child.abort_sent and not expected:
                log.error("child %d was killed by SIGKILL (out of memory? check `journalctl -k`); "
                          "its unacked messages will be redelivered", child.pid)
            elif expected:
                log.info("child %d ended by %s", child.pid, sig)
            else:
                log.warning("child %d died by %s; its unacked messages will be redelivered", child.pid, sig)
        elif code == EX_CONFIG or child.boot_failure:
            self.begin_stop("quick", EX_CONFIG,
                            f"child {child.pid} could not start (exit {code}): configuration or credentials; "
                            "stopping instead of respawning")
            return
        elif code == 0 and expected:
            log.info("child %d exited after draining", child.pid)
        else:
            log.warning("child %d exited unexpectedly with code %s", child.pid, code)
        if expected or self.stop_mode:
            return
        self.note_crash(child)

    def note_crash(self, child: ChildHandle) -> None:
        now = time.monotonic()
        self.restarts += 1
        window = self.config.worker.crash_loop_window
        self.crash_times = [t for t in self.crash_times if now - t <= window]
        # Only a child that died without finishing a single task counts toward the crash loop: one
        # killed while working (OOM killer, an operator) made progress and is simply replaced.
        if not child.ready or sum(totals_of(child.stats).values()) == 0:
            self.crash_times.append(now)
        if len(self.crash_times) >= self.config.worker.crash_loop_limit:
            self.begin_stop("quick", EX_SOFTWARE, f"{len(self.crash_times)} child crashes within {window:.0f}s: "
                                                  "crash loop, stopping")
            return
        pool = self.pools.get(child.pool)
        if pool is None:
            return
        pool.crashes += 1
        delay = min(self.config.worker.restart_backoff_max, 0.1 * (2 ** (pool.crashes - 1)))
        pool.spawn_after = now + delay
        log.info("respawning a child of pool %s in %.1fs", child.pool, delay)

    # --- periodic duties ---------------------------------------------------------------------
    def check_heartbeats(self, now: float) -> None:
        timeout = self.plan.heartbeat_timeout
        for child in self.children.values():
            if child.abort_sent is not None:
                if now - child.abort_sent >= KILL_AFTER_ABORT:
                    log.error("child %d ignored SIGABRT; sending SIGKILL", child.pid)
                    self.kill(child, signal.SIGKILL)
                    child.abort_sent = now  # resend KILL every interval until reaped
                continue
            if now - child.last_seen > timeout:
                log.error("child %d silent for %.1fs (heartbeat timeout %.1fs); SIGABRT dumps its stacks, "
                          "then it is replaced", child.pid, now - child.last_seen, timeout)
                child.abort_sent = now
                self.kill(child, signal.SIGABRT)

    def check_rss(self, now: float) -> None:
        if now - self.last_rss < RSS_INTERVAL:
            return
        self.last_rss = now
        import psutil

        for child in list(self.children.values()):
            try:
                child.rss = psutil.Process(child.pid).memory_info().rss
            except psutil.Error:
                continue
            limit = self.pools[child.pool].spec.max_memory_per_child if child.pool in self.pools else 0
            if limit and child.rss > limit * 1024 * 1024 and child.active:
                self.retire(child, f"RSS {child.rss / 2**20:.0f} MiB over the limit of {limit:.0f} MiB", replace=True)

    def check_idle(self, now: float) -> None:
        idle_limit = self.plan.exit_when_idle
        if not idle_limit or self.stop_mode or not self.children:
            return
        if not all(c.ready and c.consuming and c.inflight == 0 for c in self.children.values()):
            return
        if any(c.pending_later for c in self.children.values()):
            return  # queues empty, but a round's later jobs are still to come (idle_probe.py)
        idle = min(c.idle for c in self.children.values())
        if idle >= idle_limit:
            self.begin_stop("graceful", 0, f"queues empty and nothing in flight for {idle:.0f}s: exiting when idle")

    def enforce_stop_deadline(self, now: float) -> None:
        if now < self.stop_deadline:
            return
        for child in self.children.values():
            if child.abort_sent is None:
                log.warning("child %d still running at the stop deadline; SIGKILL (its unacked messages will "
                            "be redelivered)", child.pid)
                self.kill(child, signal.SIGKILL)
                child.abort_sent = now

    def notify(self, now: float) -> None:
        if now - self.last_sample >= 5.0:
            self.last_sample = now
            self.stats.sample(now)
        if not self.notifier or not self.notifier.enabled:
            return
        if not self.announced_ready and not self.stop_mode:
            wanted = sum(p.spec.processes for p in self.pools.values())
            if sum(1 for c in self.children.values() if c.ready and c.active) >= wanted:
                self.announced_ready = True
                self.notifier.ready(self.status_line())
                log.info("all %d children consuming: ready", wanted)
        if now - self.last_status >= 1.0:
            self.last_status = now
            self.notifier.status(self.status_line())
        interval = self.notifier.watchdog_interval()
        if interval and now - self.last_watchdog >= interval and self.healthy(now):
            self.last_watchdog = now
            self.notifier.watchdog()

    def healthy(self, now: float) -> bool:
        """The watchdog is fed only while the loop turns and no child is silent too long."""
        return all(now - c.last_seen <= self.plan.heartbeat_timeout for c in self.children.values())

    def status_line(self) -> str:
        t = self.stats.totals()
        running = sum(1 for c in self.children.values() if c.ready and c.active)
        wanted = sum(p.spec.processes for p in self.pools.values())
        inflight = sum(c.inflight for c in self.children.values())
        if self.stop_mode:
            return f"stopping ({self.stop_mode}): {len(self.children)} children left, {inflight} in flight"
        return (f"{running}/{wanted} children, {inflight} in flight, {t['done']} done, {t['failed']} failed, "
                f"{t['retried']} retried, {self.stats.rate():.1f}/s")

    # --- signals ---------------------------------------------------------------------------
    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # the sentinels tell us; reap_children runs every turn
        if signum == signal.SIGTERM:
            self.begin_stop("graceful", 0, "SIGTERM: draining")
        elif signum == signal.SIGINT:
            if self.stop_mode:
                self.begin_stop("quick", 0, "second SIGINT: quick stop")
            else:
                self.begin_stop("graceful", 0, "SIGINT: draining (send it again to stop at once)")
        elif signum == signal.SIGQUIT:
            self.begin_stop("quick", 0, "SIGQUIT: quick stop")
        elif signum == signal.SIGHUP:
            self.handle_hup()
        elif signum == signal.SIGTTIN:
            self.resize(+1)
        elif signum == signal.SIGTTOU:
            self.resize(-1)

    def begin_stop(self, mode: str, code: int, why: str) -> None:
        if self.stop_mode == "quick" or self.stop_mode == mode:
            if code and not self.exit_code:
                self.exit_code = code
            return
        log.log(logging.ERROR if code else logging.INFO, "%s", why)
        self.stop_mode = mode
        if code and not self.exit_code:
            self.exit_code = code
        if self.notifier:
            self.notifier.stopping(why)
        now = time.monotonic()
        sig = signal.SIGTERM if mode == "graceful" else signal.SIGQUIT
        # Children drain within graceful_timeout themselves; the master allows one more second.
        self.stop_deadline = now + (self.plan.graceful_timeout + 1.0 if mode == "graceful" else QUICK_TIMEOUT)
        for child in self.children.values():
            child.expected_exit = True
            child.state = "stopping"
            self.kill(child, sig)

    def resize(self, delta: int) -> None:
        if self.stop_mode:
            return
        for name, pool in self.pools.items():
            size = max(1, pool.spec.processes + delta)
            if size != pool.spec.processes:
                log.info("pool %s: %d -> %d processes", name, pool.spec.processes, size)
                pool.spec = dataclasses.replace(pool.spec, processes=size)
        self.plan = dataclasses.replace(self.plan, pools=tuple(p.spec for p in self.pools.values()))

    def handle_hup(self) -> None:
        if self.stop_mode or self.reload_fn is None:
            return
        if self.notifier:
            self.notifier.reloading()
        try:
            plan, config, settings, registry = self.reload_fn()
        except Exception as exc:  # keep running with what we have
            log.error("reload failed, keeping the running configuration: %s", exc)
            if self.notifier:
                self.notifier.ready(self.status_line())
            return
        log.info("configuration reloaded; rolling children one by one: %s", self.describe_plan_of(plan))
        self.plan, self.config, self.settings, self.registry = plan, config, settings, registry
        new_pools = {p.name: p for p in plan.pools}
        for name, pool in list(self.pools.items()):
            if name not in new_pools:
                for child in self.children.values():
                    if child.pool == name:
                        self.retire(child, "pool removed by reload", replace=False)
                del self.pools[name]
        for name, spec in new_pools.items():
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = PoolState(spec)
            else:
                pool.spec = spec
                pool.generation += 1
        if self.notifier:
            self.notifier.ready(self.status_line())

    @staticmethod
    def describe_plan_of(plan: WorkerPlan) -> str:
        return "; ".join(f"{p.name} {p.processes}x{p.threads}" for p in plan.pools)

    # --- status ----------------------------------------------------------------------------
    def children_status(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for c in sorted(self.children.values(), key=lambda c: (c.pool, c.started)):
            totals = totals_of(c.stats)
            out.append({"pid": c.pid, "pool": c.pool, "state": c.state, "ready": c.ready, "rss": c.rss,
                        "done": totals["done"], "failed": totals["failed"], "retried": totals["retried"],
                        "refused": totals["refused"], "inflight": c.inflight,
                        "uptime": round(now - c.started, 1), "heartbeat_age": round(now - c.last_seen, 2)})
        return out

    def answer(self, request: dict) -> dict:
        cmd = request.get("cmd", "status")
        if cmd != "status":
            return {"error": f"unknown command {cmd!r}"}
        return {
            "worker": self.plan.name, "pid": os.getpid(), "profile": self.plan.profile,
            "uptime": round(time.monotonic() - self.started, 1), "started": self.started_wall,
            "state": f"stopping ({self.stop_mode})" if self.stop_mode else "running",
            "pools": [{"name": p.spec.name, "queues": list(p.spec.queues), "processes": p.spec.processes,
                       "threads": p.spec.threads} for p in self.pools.values()],
            "children": self.children_status(), "totals": self.stats.totals(),
            "rate_per_s": round(self.stats.rate(), 2), "restarts": self.restarts,
        }

    def render_metrics(self) -> str:
        from utilitarian.supervisor.metrics import render

        counts, hist = self.stats.merged()
        return render(self.plan.name, counts, hist, self.children_status(), self.restarts)
