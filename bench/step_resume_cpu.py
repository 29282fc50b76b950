"""Benchmark: CPU per resumed step of a stepwise task in a worker child, without a broker or meters.

N stepwise tasks run through the child's real machinery (supervisor/stepping.py: the wait loop of
waits.py, the step threads, the runner's lock and deadline rules) with a stand-in for the rest of
the runner. Each task does `--steps` round trips on a socket pair: it sends a byte to its peer end,
parks a steps.Readable (every other round trip a steps.Ask sent 1 ms later by the wait loop, as
an IEC option select is) and reads the byte when resumed. The figure is this process's CPU per resume: parking, the wait loop's
wake-up, the hand-off to a step thread and the step's bookkeeping (the part of an IEC poll's
overhead that multiplies with its round trips), and the sockets' few system calls.

    .venv/bin/python bench/step_resume_cpu.py [--tasks 200] [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import pathlib
import socket
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from utilitarian import steps  # noqa: E402
from utilitarian.supervisor import delivery as rules  # noqa: E402
from utilitarian.supervisor.stepping import Stepping  # noqa: E402


class _Running:
    __slots__ = ("steps", "soft", "stepping", "wake", "throw", "label", "settled", "guard", "message", "done")

    def __init__(self, gen, soft: bool):
        self.steps, self.soft, self.stepping, self.wake, self.throw = gen, soft, False, None, None
        self.label, self.settled, self.guard, self.message, self.done = "bench[1]", False, None, None, None


class _Runner:
    """What Stepping uses of a TaskRunner."""

    def __init__(self, finished: threading.Semaphore):
        self._lock = threading.Lock()
        self.rules = rules.DeliveryRules()
        self.task_local = threading.local()
        self.clock = time.monotonic
        self.abandoned = 0
        self.finished = finished
        self.stepping = Stepping(self)

    def _handle(self, r) -> None:
        if not self.stepping.step(r):
            self.finished.release()

    def _end(self, r, error) -> None:
        with self._lock:
            self.rules.on_finished(r)
            r.settled = True
        if error is not None:
            print(f"task failed: {error!r}", file=sys.stderr)


def _task(a: socket.socket, b: socket.socket, rounds: int) -> steps.Steps:
    fd = a.fileno()
    for i in range(rounds):
        if i % 2:  # the answer is there already; the request goes out from the wait loop, 1 ms on
            b.send(b"x")
            ask = steps.Ask(a, b"y", time.monotonic() + 0.001, time.monotonic() + 5.0)
            if not (yield ask):
                raise RuntimeError("ask timed out")
            b.recv(16)
        else:
            b.send(b"x")
            if not (yield steps.Readable(fd, time.monotonic() + 5.0)):
                raise RuntimeError("read timed out")
        a.recv(16)


def run_round(runner: _Runner, finished: threading.Semaphore, tasks: int, rounds: int, soft: bool) -> float:
    pairs = [socket.socketpair() for _ in range(tasks)]
    for a, b in pairs:
        a.setblocking(False)
    started = time.process_time()
    for a, b in pairs:
        r = _Running(_task(a, b, rounds), soft)
        with runner._lock:
            runner.rules.on_started(r, time.monotonic(), 60.0 if soft else None, 120.0)
        runner.stepping.threads.submit(r)
    for _ in range(tasks):
        finished.acquire()
    cpu = time.process_time() - started
    for a, b in pairs:
        a.close()
        b.close()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20, help="round trips (resumes) per task")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-soft", action="store_true", help="tasks without a soft time limit")
    args = parser.parse_args()
    finished = threading.Semaphore(0)
    runner = _Runner(finished)
    runner.stepping.start()
    figures = []
    for _ in range(args.rounds):
        cpu = run_round(runner, finished, args.tasks, args.steps, not args.no_soft)
        figures.append(cpu / (args.tasks * args.steps) * 1e6)
    runner.stepping.stop()
    figures.sort()
    print(f"# {args.tasks} tasks x {args.steps} resumes, {args.rounds} rounds; load {__import__('os').getloadavg()[0]:.2f}")
    print(f"CPU per resume: median {figures[len(figures) // 2]:.1f} us (min {figures[0]:.1f}, max {figures[-1]:.1f})")


if __name__ == "__main__":
    main()
