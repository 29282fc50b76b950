"""The pre-fork master's loop: single-threaded, no broker connection. It carries out what the
supervision rules decide (fork, signal, sd_notify, log) and feeds them what it observes, waiting on
children, their pipes, a signal wake-up pipe and local clients together, never on any one of them."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass

from utilitarian.errors import EX_SOFTWARE
from utilitarian.supervisor import events as ev
from utilitarian.supervisor.child import ChildSpec, child_main
from utilitarian.supervisor.clients import wait_io
from utilitarian.supervisor.commands import check_command, describe
from utilitarian.supervisor.heartbeat import StatusReader
from utilitarian.supervisor.plan import WorkerPlan
from utilitarian.supervisor.report import metrics_text, status_doc
from utilitarian.supervisor.signals import SignalQueue
from utilitarian.supervisor.supervision import Supervisor

log = logging.getLogger(__name__)
rules_log = logging.getLogger("utilitarian.supervisor.supervision")  # what the rules decided
TICK = 0.25  # the loop turns at least this often: heartbeat checks, deadlines, sd_notify


@dataclass(eq=False)
class Handle:
    """A forked child as the loop knows it: the process (sentinel, exit code) and its pipe."""

    process: multiprocessing.Process
    reader: StatusReader

    @property
    def pid(self) -> int:
        return self.process.pid


class Arbiter:
    def __init__(self, plan: WorkerPlan, *, config, registry, settings, loglevel: str, reload=None,
                 notifier=None, control_path: str | None = None, metrics=None, agent=None, clock=time.monotonic,
                 wall_clock=time.time):
        self.config = config
        self.registry = registry
        self.settings = settings
        self.loglevel = loglevel
        self.reload_fn = reload  # () -> (plan, config, settings, registry); raises on a bad file
        self.notifier = notifier
        self.control_path = control_path
        self.control = None
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.started_wall = wall_clock()
        self.last_error: dict | None = None  # the latest warning or error the rules logged, for status
        self.metrics_where = getattr(metrics, "where", None)
        self.observed: dict = {}  # the control agent's latest "observed" report
        self.agent = agent  # fleet.agent.ControlPost: the children run the worker's control agent; or None
        self.signals = SignalQueue()
        enabled = bool(notifier and notifier.enabled)
        self.sup = Supervisor(plan, config.worker, clock(), notify=enabled,
                              watchdog_interval=notifier.watchdog_interval() if enabled else None,
                              can_reload=reload is not None)
        self.handles: dict[int, Handle] = {}  # by the supervisor's child id
        self.feedback: list = []  # events produced by carrying out actions, applied next turn
        self.ctx = multiprocessing.get_context("fork")

    @property
    def plan(self) -> WorkerPlan:
        return self.sup.plan

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        self.signals.install()
        if self.control_path:
            from utilitarian.supervisor.control import ControlServer

            self.control = ControlServer(self.control_path)
        else:
            self.agent = None  # the agent talks to the master only through the control socket
        log.info("worker %s starting: %s", self.plan.name, self.describe_plan())
        code = EX_SOFTWARE
        readable: set = set()
        writable: set = set()
        try:
            while True:
                now = self.clock()
                done = self.execute(self.sup.step(now, self.observe(readable)))
                if done is not None:
                    code = done
                    break
                self.serve_clients(readable, writable, now)
                readable, writable = self.wait(now)
        except Exception:  # the master must not die with children left behind
            log.exception("master loop failed; killing children")
            code = EX_SOFTWARE
            for handle in self.handles.values():
                self.send(handle, signal.SIGKILL)
        finally:
            if self.notifier:
                self.notifier.stopping("stopped")
            for server in self.servers():
                server.close()
        log.info("worker %s stopped (exit %d)", self.plan.name, code)
        return code

    def servers(self) -> list:
        return [s for s in (self.control, self.metrics) if s is not None]

    def wait(self, now: float) -> tuple[set, set]:
        reads = [self.signals.wake_r]
        for handle in self.handles.values():
            reads += [handle.process.sentinel, handle.reader.fd]
        writes = []
        deadline = now + TICK
        for server in self.servers():
            reads += server.read_fds()
            writes += server.write_fds()
            deadline = min(deadline, server.next_deadline())
        timeout = 0.0 if self.feedback else min(deadline - now, self.sup.wake_by(now))
        return wait_io(reads, writes, timeout)

    def observe(self, readable: set) -> list:
        """Everything that happened since the last turn, as events, in a fixed order: signals,
        results of our own actions, child reports, then exits (after the child's last words)."""
        if self.signals.wake_r in readable:
            self.signals.drain_wakeups()
        events: list = [ev.SignalReceived(s) for s in self.signals.pop_all()]
        events += self.feedback
        self.feedback = []
        for cid, handle in list(self.handles.items()):
            events += [ev.Report(cid, doc) for doc in handle.reader.read()]
            if handle.process.exitcode is None and handle.process.is_alive():
                continue
            handle.process.join(0)
            events += [ev.Report(cid, doc) for doc in handle.reader.read()]
            handle.reader.close()
            del self.handles[cid]
            events.append(ev.Exited(cid, handle.process.exitcode))
        return events

    def serve_clients(self, readable: set, writable: set, now: float) -> None:
        if self.control is not None:
            self.control.serve(readable, writable, now, self.answer)
        if self.metrics is not None:
            self.metrics.serve(readable, writable, now,
                               lambda: metrics_text(self.sup, self.clock(), observed=self.observed))

    # --- carrying out actions ------------------------------------------------------------------
    def execute(self, actions) -> int | None:
        """Do what the rules said; returns the exit code once they say the master is done."""
        for action in actions:
            if isinstance(action, ev.Log):
                rules_log.log(action.level, action.msg, *action.args)
                if action.level >= logging.WARNING:
                    self.last_error = {"at": self.wall_clock(), "message": action.render()}
            elif isinstance(action, ev.Spawn):
                self.spawn_child(action)
            elif isinstance(action, ev.Kill):
                handle = self.handles.get(action.cid)
                if handle is not None:
                    self.send(handle, action.signum)
            elif isinstance(action, ev.Notify):
                self.notify(action)
            elif isinstance(action, ev.MeasureMemory):
                self.measure_memory(action.cids)
            elif isinstance(action, ev.LoadConfig):
                self.load_config()
            elif isinstance(action, ev.Exit):
                return action.code
            else:
                raise TypeError(f"unknown action {action!r}")
        return None

    def spawn_child(self, action: ev.Spawn) -> None:
        spec = ChildSpec(worker_name=self.plan.name, pool=action.pool, index=action.index, config=self.config,
                         registry=self.registry, settings=self.settings,
                         graceful_timeout=self.plan.graceful_timeout, loglevel=self.loglevel,
                         boot_may_fail=action.boot_may_fail, probe_pending=bool(self.plan.exit_when_idle),
                         agent=self.agent)
        r_fd, w_fd = os.pipe()
        close_fds = [r_fd] + self.inherited_fds()
        process = self.ctx.Process(target=child_main, args=(spec, w_fd, close_fds, self.signals.uninstall_in_child),
                                   name=f"{action.pool.name}-{action.index}", daemon=False)
        try:
            process.start()
        except OSError as exc:  # EAGAIN, ENOMEM: a crash of that child, respawned with backoff
            log.error("cannot fork a child of pool %s: %s", action.pool.name, exc)
            os.close(r_fd)
            os.close(w_fd)
            self.feedback.append(ev.Exited(action.cid, None))
            return
        os.close(w_fd)
        self.handles[action.cid] = Handle(process, StatusReader(r_fd))
        self.sup.started_pid(action.cid, process.pid)
        log.info("spawned child %d (pool %s, %d threads)", process.pid, action.pool.name, action.pool.threads)

    def inherited_fds(self) -> list[int]:
        """The master's descriptors a forked process must close: a client socket kept open by a
        child would never see the master close it."""
        fds = [self.signals.wake_r, self.signals.wake_w] + [h.reader.fd for h in self.handles.values()]
        for server in self.servers():
            fds += server.read_fds() + server.write_fds()
        return fds

    @staticmethod
    def send(handle: Handle, signum: int) -> None:
        try:
            os.kill(handle.pid, signum)
        except ProcessLookupError:
            pass

    def notify(self, action: ev.Notify) -> None:
        if self.notifier is None:
            return
        if action.kind == "watchdog":
            self.notifier.watchdog()
        elif action.kind == "reloading":
            self.notifier.reloading()
        else:  # ready, status, stopping
            getattr(self.notifier, action.kind)(action.text)

    def measure_memory(self, cids) -> None:
        import psutil

        for cid in cids:
            handle = self.handles.get(cid)
            if handle is None:
                continue
            try:
                rss = psutil.Process(handle.pid).memory_info().rss
            except psutil.Error:
                continue
            self.feedback.append(ev.MemoryMeasured(cid, rss))

    def load_config(self) -> None:
        try:
            plan, config, settings, registry = self.reload_fn()
        except Exception as exc:  # keep running with what we have
            self.feedback.append(ev.ReloadFailed(str(exc)))
            return
        self.config, self.settings, self.registry = config, settings, registry
        self.feedback.append(ev.Reloaded(plan, config.worker))

    # --- answers to local clients ------------------------------------------------------------
    def answer(self, request: dict) -> dict:
        """Status, ping, or an operator's change: checked now (an error changes nothing), carried
        out by the rules next turn."""
        cmd = request.get("cmd", "status")
        if cmd == "status":
            doc = status_doc(self.sup, self.clock(), pid=os.getpid(), started_wall=self.started_wall)
            doc["last_error"] = self.last_error
            doc["metrics"] = self.metrics_where
            doc["control_agent"] = self.observed.get("pid")  # the child serving it, as last reported
            return doc
        if cmd == "ping":
            return {"pong": True, "worker": self.plan.name, "pid": os.getpid()}
        if cmd == "observed":  # the control agent's broker view (connection, queue depths), for metrics
            self.observed = {**request, "at": self.clock()}
            return {"ok": True}
        error, command = check_command(self.sup, request)
        if error:
            return {"error": error}
        self.feedback.append(command)
        return {"ok": True, "accepted": describe(command)}

    def describe_plan(self) -> str:
        return "; ".join(f"pool {p.name}: {p.processes}x{p.threads} on "
                         f"{', '.join(q.removeprefix('utilitarian.tasks.') for q in p.queues)}"
                         for p in self.plan.pools)
