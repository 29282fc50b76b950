"""Benchmark: the Python work of one AMR poll, without the worker runtime around it.

`amr.execute_meter_task` is called in this process for N scheduled jobs (the bench registry of
amr_round.py, simulated Modbus meters in a separate process, 0 ms latency by default), from one
thread or from --threads threads, with the real store and the commit outbox. With --steps N the
task runs stepwise (utilitarian/steps.py) as a worker child runs it: --threads polls in flight on
at most N task threads, their socket and outbox waits parked in one wait loop (supervisor/waits.py). Printed: this
process's CPU (user + system) per poll, the polling threads' own share, and context switches per
poll, so the ~1 ms per poll of the round splits into the work of a poll and the cost of many
threads around it (the round adds the broker runtime on top).

    .venv/bin/python bench/amr_poll_cpu.py [--jobs 2000] [--threads 1] [--latency 0] [--profile FILE]
    .venv/bin/python bench/amr_poll_cpu.py --threads 100 --steps 4 --latency 0.05

`--protocol iec` polls simulated IEC 62056-21 meters over TCP instead (mode C readout: two answers
and three reaction-time pauses per poll); give each its own port (`--gateways` = `--jobs`), else
the meters behind one gateway share a bus that carries one session at a time (interface lock):

    .venv/bin/python bench/amr_poll_cpu.py --protocol iec --jobs 2000 --gateways 2000 --threads 100 [--steps 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import resource
import sys
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--protocol", choices=("modbus", "iec"), default="modbus")
    parser.add_argument("--steps", type=int, default=0, metavar="N",
                        help="run the task stepwise: --threads polls in flight on at most N task threads")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the polling thread (with --threads 1)")
    parser.add_argument("--strace", metavar="FILE", help="count this process's system calls while it polls "
                        "(strace -c; the simulator is not traced); the counts go to FILE")
    parser.add_argument("--sched", metavar="FILE", help="record where this process's threads go to sleep "
                        "while it polls (perf record -e sched:sched_switch -g; `perf report -i FILE`)")
    args = parser.parse_args()

    from amr_round import install, start_simulator
    from common import ctx_switches, stop, tmpdir

    from utilitarian.amr.store import open_store
    from utilitarian.amr.tasks import execute_meter_task
    from utilitarian.app import App
    from utilitarian.config import parse_config
    from utilitarian.tasks import TaskContext

    work = tmpdir()
    args.meters = args.jobs
    sim, meters_file = start_simulator(args, work)
    try:
        db_url = f"sqlite:///{work / 'amr.sqlite3'}"
        install(db_url, meters_file, args.protocol)
        with open_store(db_url) as store:
            jobs = store.jobs_for_schedule("daily")
        config = parse_config({"broker": {"url": "amqp://guest:guest@127.0.0.1:5672/unused"},
                               "database": {"url": db_url}, "beat": {"builtin_schedules": False},
                               "amr": {"store_pool_size": 16}})
        app = App(config, name="bench poll cpu")
        slot = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()

        def run(part):
            for meter, task, _ in part:
                ctx = TaskContext(id=f"{meter}/{task}", name="amr.execute_meter_task", retries=0, queue="", app=app)
                out = execute_meter_task(ctx, meter=meter, amr_task=task, slot=slot, round_id="bench")
                assert out["outcome"] == "done", out

        run(jobs[:20])  # warm: imports, connections, caches that hold for the process's life
        jobs = jobs[20:]
        parts = [jobs[i::args.threads] for i in range(args.threads)]
        thread_cpu = [0.0] * args.threads
        thread_switches = [(0, 0)] * args.threads

        batches: list[tuple[float, float]] = []  # (process, polling thread) CPU per poll of each 100 polls

        def worker(i):
            began, switches = time.thread_time(), ctx_switches("/proc/thread-self/status")
            if args.threads == 1:  # in batches: the least loaded batch shows the work without the noise
                for start in range(0, len(parts[i]), 100):
                    part = parts[i][start:start + 100]
                    p0, t0 = time.process_time(), time.thread_time()
                    run(part)
                    batches.append(((time.process_time() - p0) / len(part), (time.thread_time() - t0) / len(part)))
            else:
                run(parts[i])
            thread_cpu[i] = time.thread_time() - began
            if args.threads > 1:
                thread_switches[i] = tuple(b - a for a, b in zip(switches, ctx_switches("/proc/thread-self/status")))

        if args.steps:
            stepper = Stepwise(app, slot, jobs, in_flight=args.threads, threads=args.steps)

        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)
        tracer = None
        if args.strace or args.sched:
            import subprocess

            command = (["strace", "-f", "-c", "-o", args.strace] if args.strace else
                       ["perf", "record", "-q", "-e", "sched:sched_switch", "--call-graph", "dwarf,16384", "-o", args.sched])
            tracer = subprocess.Popen([*command, "-p", str(os.getpid())], stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached to every thread
        cs0, r0, t0 = ctx_switches(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        if args.steps:
            stepper.run()
            thread_cpu = [stepper.thread_cpu()]
        elif args.threads == 1:
            if profiler:
                profiler.enable()
            worker(0)
            if profiler:
                profiler.disable()
        else:
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wall = time.monotonic() - t0
        r1, cs1 = resource.getrusage(resource.RUSAGE_SELF), ctx_switches()
        if tracer is not None:
            import signal

            tracer.send_signal(signal.SIGINT)
            tracer.wait()
        n = len(jobs)
        if args.threads > 1 and not args.steps:  # the polling threads have ended: theirs, and the rest's (flusher)
            cs1 = tuple(c + sum(t[k] for t in thread_switches) for k, c in enumerate(cs1))
        user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        print(f"# {n} {args.protocol} polls, {args.threads} {f'in flight on <= {args.steps} thread(s) (stepwise)' if args.steps else 'thread(s)'}, {args.latency * 1000:.0f} ms latency; load "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"process CPU/poll {(user + system) / n * 1e3:.3f} ms (user {user / n * 1e3:.3f}, sys "
              f"{system / n * 1e3:.3f}); polling threads {sum(thread_cpu) / n * 1e3:.3f} ms; wall {wall:.2f}s; "
              f"context switches/poll {(cs1[0] - cs0[0]) / n:.1f} voluntary, {(cs1[1] - cs0[1]) / n:.2f} involuntary")
        if batches:
            best = sorted(batches)[:max(1, len(batches) // 4)]  # the least disturbed quarter
            print(f"least loaded quarter of the 100-poll batches: process CPU/poll "
                  f"{sum(b[0] for b in best) / len(best) * 1e3:.3f} ms, polling thread "
                  f"{sum(b[1] for b in best) / len(best) * 1e3:.3f} ms")
        if profiler:
            profiler.dump_stats(args.profile)
        app.close()
    finally:
        stop(sim)


class _Job:
    __slots__ = ("gen", "value")

    def __init__(self, gen):
        self.gen, self.value = gen, None


class Stepwise:
    """The stepwise task driven as the worker's runner drives it: task threads (TaskThreads) run
    its steps, a wait loop (WaitLoop) parks its waits and hands each resumption back to them."""

    def __init__(self, app, slot, jobs, *, in_flight: int, threads: int):
        from utilitarian.amr.tasks import execute_meter_task
        from utilitarian.supervisor.threads import TaskThreads
        from utilitarian.supervisor.waits import WaitLoop

        self.app, self.slot, self.steps = app, slot, execute_meter_task.steps
        self.jobs = iter(jobs)
        self.left = len(jobs)
        self.in_flight = in_flight
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.executor = TaskThreads(self._step, threads, name="bench-step")
        self.waits = WaitLoop(self._resume)
        self.waits.start()

    def _next(self):
        with self.lock:
            job = next(self.jobs, None)
        if job is None:
            return None
        from utilitarian.tasks import TaskContext

        meter, task, _ = job
        ctx = TaskContext(id=f"{meter}/{task}", name="amr.execute_meter_task", retries=0, queue="", app=self.app)
        return _Job(self.steps(ctx, meter=meter, amr_task=task, slot=self.slot, round_id="bench"))

    def run(self):
        for _ in range(self.in_flight):
            item = self._next()
            if item is not None:
                self.executor.submit(item)
        self.done.wait()

    def _resume(self, item, value):
        item.value = value
        self.executor.submit(item)

    def _step(self, item):
        while item is not None:
            try:
                wait = item.gen.send(item.value)
            except StopIteration as stop:
                assert stop.value["outcome"] == "done", stop.value
                with self.lock:
                    self.left -= 1
                    if not self.left:
                        self.done.set()
                item = self._next()  # the next delivery, as the pump would hand it over
                continue
            value = self.waits.park(item, wait)
            if value is None:
                return
            item.value = value

    def thread_cpu(self) -> float:
        total = 0.0
        for thread in [*self.executor.threads, self.waits._thread]:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, AttributeError):
                pass
        return total


if __name__ == "__main__":
    main()
