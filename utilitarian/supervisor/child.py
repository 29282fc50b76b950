"""A worker child: post-fork initialisation, then the pump (this process's main thread owns the
broker connection and makes only pika calls) feeding a thread pool, a settler thread for time
limits and abandoned deliveries, heartbeats to the master, and an orderly drain.

Exit codes: 0 after a drain or quick stop; 78 when it cannot boot (refused credentials, a
queue declared with other arguments) and may fail its boot (`ChildSpec.boot_may_fail`: no
child of this master was ready yet): retrying cannot help, so the master stops too. Once it
consumed, the same refusals are retried (see broker/recovery.py).
A child whose master died (parent-death signal, EPIPE on the status pipe, or a new parent)
stops consuming, drains within the graceful timeout and exits."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass

from utilitarian.errors import EX_CONFIG, EX_SOFTWARE, UtilitarianError
from utilitarian.log import enable_stack_dumps
from utilitarian.supervisor.plan import PoolSpec

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL = 1.0


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, built by the master before the fork (inherited, not pickled)."""

    worker_name: str
    pool: PoolSpec
    index: int
    config: object
    registry: object
    settings: object
    graceful_timeout: float
    loglevel: str
    # False once a child of this master was ready: a refusal then is a transient broker state
    # (vhost restarting, access briefly revoked), retried instead of stopping the whole fleet.
    boot_may_fail: bool = True
    probe_pending: bool = False  # ask the idle probes (the worker runs with --exit-when-idle)
    # fleet.agent.ControlPost: run the worker's control agent (serve it, or stand by); None without
    # a control socket, the agent's only way to the master.
    agent: object = None


PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
M_ARENA_MAX = -8  # glibc mallopt parameter
# glibc gives each thread that allocates under contention an arena of its own, up to 8 per core.
# A child's polls start on one thread and end on another (stepwise tasks), so memory freed in one
# arena was taken from another: with 16 arenas the polling child held ~10 MiB more in a round
# (docs/benchmarks-amr.md). Two arenas keep that down; few threads run Python at once anyway (GIL).
CHILD_MALLOC_ARENAS = 2
MASTER_GONE_SIGNAL = signal.SIGUSR2  # the kernel sends it when the master dies


def _prctl(option: int, arg) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except Exception:  # not Linux, or no libc symbol
        return False


def limit_malloc_arenas(count: int = CHILD_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas in this process, unless MALLOC_ARENA_MAX says otherwise (the
    operator's value, read by glibc itself at exec). Best effort: not glibc, nothing happens."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt(M_ARENA_MAX, count) == 1
    except Exception:  # not glibc: no mallopt symbol
        return False


def set_process_name(name: str) -> None:
    """Name the process for ps/top (Linux prctl); best effort, the name is cosmetic."""
    _prctl(PR_SET_NAME, name.encode()[:15])


class Child:
    def __init__(self, spec: ChildSpec, status_fd: int, master_pid: int | None = None,
                 clock=time.monotonic):
        self.spec = spec
        self.status_fd = status_fd
        self.master_pid = master_pid or os.getppid()
        self.clock = clock
        self.stop: str | None = None  # None | "graceful" | "quick"
        self.drain_deadline = float("inf")
        self.retire_sent = False
        self.ready_sent = False
        self.orphaned = False
        self.hard_limit_hit = False  # set on the settler thread, acted on by the pump

    def handle_term(self, signum, frame) -> None:
        self.stop = self.stop or "graceful"

    def handle_quit(self, signum, frame) -> None:
        self.stop = "quick"

    def handle_master_gone(self, signum, frame) -> None:
        self.orphaned = True
        self.stop = self.stop or "graceful"

    def master_alive(self) -> bool:
        """Backstop for the parent-death signal: reparented, or the status pipe is broken."""
        return os.getppid() == self.master_pid

    def init_process(self) -> None:
        # Signals: the master coordinates; Ctrl-C in a terminal reaches us too and is ignored.
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(MASTER_GONE_SIGNAL, self.handle_master_gone)
        # The kernel signals us when the master dies (SIGKILL, OOM): no orphan keeps consuming.
        # Checked once after arming it: the master may have died before.
        _prctl(PR_SET_PDEATHSIG, int(MASTER_GONE_SIGNAL))
        if not self.master_alive():
            self.handle_master_gone(None, None)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        random.seed()
        limit_malloc_arenas()
        # SIGABRT from the master (stale heartbeat) dumps every thread's stack before dying.
        enable_stack_dumps()
        pool = self.spec.pool
        set_process_name(f"util-{pool.name}-{self.spec.index}")

    def run(self) -> int:
        from utilitarian.app import App
        from utilitarian.broker.consumer import Consumer
        from utilitarian.broker.recovery import ConnectionRules
        from utilitarian.broker.topology import declare_all, ensure_declared
        from utilitarian.log import setup_logging
        from utilitarian.supervisor.heartbeat import StatusWriter
        from utilitarian.supervisor.runner import TaskRunner
        from utilitarian.supervisor.stats import TaskStats
        from utilitarian import telemetry

        spec = self.spec
        pool = spec.pool
        clock = self.clock
        task_local = threading.local()
        setup_logging(spec.loglevel, fmt=spec.config.logging.format,
                      process_name=f"{pool.name}-{spec.index}", task_local=task_local)
        writer = StatusWriter(self.status_fd)
        app = App(spec.config, registry=spec.registry, settings=spec.settings,
                  name=f"utilitarian {spec.worker_name} {pool.name}-{spec.index} publisher")
        rules = ConnectionRules(boot_may_fail=spec.boot_may_fail, backoff_cap=spec.settings.retry_backoff_max)
        consumer = Consumer(spec.settings, list(pool.queues), pool.prefetch, on_delivery=lambda d: runner.submit(d),
                            name=f"utilitarian {spec.worker_name} {pool.name}-{spec.index}", rules=rules, clock=clock)
        consumer.prepare = lambda conn, channel: ensure_declared(conn, channel, spec.settings.queue_type)
        consumer.declare = lambda channel: declare_all(channel, queue_type=spec.settings.queue_type)
        stats = TaskStats()
        runner = TaskRunner(registry=spec.registry, app=app, consumer=consumer, threads=pool.threads, stats=stats,
                            max_deliveries=spec.config.worker.max_deliveries,
                            max_message_bytes=spec.config.worker.max_message_bytes,
                            hard_time_limit=pool.hard_time_limit, task_local=task_local, clock=clock,
                            follow_up_backoff_cap=spec.settings.retry_backoff_max)
        started = clock()
        last_beat = -HEARTBEAT_INTERVAL
        from utilitarian.supervisor.idle_probe import PendingLaterProbe

        later = PendingLaterProbe.for_child(app, pool.queues, enabled=spec.probe_pending).start()
        from utilitarian.supervisor.collectors import MetricsCollectors

        # Started once the child consumes: Thread.start() waits until the new thread runs, and the
        # first collection (a store query) would share the GIL with the connect; its gauges can wait.
        collectors = MetricsCollectors.for_child(app, pool.queues)
        agent = None

        def on_consuming() -> None:
            nonlocal agent
            if not self.ready_sent:
                self.ready_sent = True
                writer.event("ready", boot=round(clock() - started, 4))
                collectors.start()
                if spec.agent is not None:  # after the task connection: a child that cannot consume has no say
                    from utilitarian.fleet.agent import ControlAgent

                    agent = ControlAgent.for_child(spec.settings, spec.agent, master_pid=self.master_pid).start()
            else:
                writer.event("consuming")

        def on_hard_limit(running) -> None:
            # Settler thread: record only; the pump acts on it in tick().
            self.hard_limit_hit = True

        def beat() -> None:
            writer.heartbeat(stats=stats.snapshot(), inflight=runner.in_flight(), consuming=consumer.consuming,
                             idle=round(runner.idle_for(), 3), why=consumer.why if not self.stop else "draining",
                             reconnects=rules.reconnects, cancels=rules.cancels,
                             dead_letter_failures=runner.dead_letter_failures,
                             pending_later=later.pending_later or runner.held > 0,
                             telemetry=telemetry.REGISTRY.snapshot() if telemetry.REGISTRY.families else None)

        def tick() -> None:
            nonlocal last_beat
            now = clock()
            if not self.orphaned and (writer.master_gone or not self.master_alive()):
                self.orphaned = True
                self.stop = self.stop or "graceful"
            if self.hard_limit_hit and not self.retire_sent:
                # The stuck thread cannot be killed: stop taking work, let siblings finish, exit,
                # and have the master start a replacement now so capacity does not dip.
                self.request_retire(writer, "hard_time_limit", drain_now=True)
                self.stop = self.stop or "graceful"
            if self.stop and consumer.stop_requested is None:
                if self.orphaned:
                    log.error("master %d is gone; draining: no new deliveries, %d in flight get %.1fs, then exit",
                              self.master_pid, runner.in_flight(), spec.graceful_timeout)
                if self.stop == "graceful":
                    self.drain_deadline = now + spec.graceful_timeout
                    log.info("draining: no new deliveries, %d in flight get %.1fs", runner.in_flight(),
                             spec.graceful_timeout)
                consumer.stop("drain" if self.stop == "graceful" else "now")
            elif self.stop == "quick":
                consumer.stop("now")
            if self.stop:
                runner.drain()  # held deliveries go back now, not after their backoff
                if agent is not None:
                    agent.drain()
            if now - last_beat >= HEARTBEAT_INTERVAL:
                last_beat = now
                beat()

        def on_task_limit() -> None:
            # Stop taking work now (in-flight tasks finish); the master starts the replacement
            # at once, so the pool is short of this child only while it boots.
            consumer.cancel()
            self.request_retire(writer, "max_tasks", drain_now=True)
            self.stop = self.stop or "graceful"

        runner.task_limit = pool.max_tasks_per_child
        runner.on_task_limit = on_task_limit
        consumer.on_consuming = on_consuming
        runner.on_hard_limit = on_hard_limit
        runner.start()
        code = 0
        try:
            consumer.run(tick, in_flight=runner.in_flight, drain_deadline=lambda: self.drain_deadline)
        except Exception as exc:
            if isinstance(exc, UtilitarianError) and exc.exit_code == EX_CONFIG:
                # refused credentials or TLS certificate, a queue with other arguments, at boot
                log.error("cannot consume: %s; stopping (retrying cannot help)", exc)
                writer.event("boot_failed", code=EX_CONFIG, reason=str(exc))
                code = EX_CONFIG
            else:
                log.error("child failed: %s", exc, exc_info=True)
                code = EX_SOFTWARE
        finally:
            later.stop()
            collectors.stop()
            if agent is not None:  # the last to stop: it answered for the worker during the drain
                agent.finish()
            beat()
            runner.shutdown()
            try:
                app.close()
            except Exception as exc:  # closing the publisher of a dead broker
                log.debug("closing publisher: %s", exc)
        log.info("child exiting with code %d after %d task(s)", code, stats.total())
        return code

    def request_retire(self, writer, reason: str, *, drain_now: bool) -> None:
        if not self.retire_sent:
            self.retire_sent = True
            writer.event("retire", reason=reason, drain_now=drain_now)


def child_main(spec: ChildSpec, status_fd: int, close_fds: list[int], before_run=None) -> None:
    """Entry point in the forked process; never returns (os._exit, so that abandoned task
    threads — stuck past a hard limit — cannot hold the process open)."""
    code = EX_SOFTWARE
    master_pid = os.getppid()  # first thing: the master forked us a moment ago
    try:
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if before_run:
            before_run()
        child = Child(spec, status_fd, master_pid)
        child.init_process()
        code = child.run()
    except BaseException:  # last resort: report and exit with a code the master decodes
        logging.getLogger(__name__).exception("child crashed during start-up")
    finally:
        from utilitarian.log import flush_all

        flush_all()
        os._exit(code)
