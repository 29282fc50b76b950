"""Fast A/B of a worker's CPU per no-op task between source trees, alternating in the same minutes:
the queue of one vhost is filled by Celery's producer, then a worker started from one tree (its
defaults with -c 2, or the flags given) drains it; printed per run and as medians per tree: CPU per
task of the worker's process tree from its first task to its last, the steady rate and end to end.

  python bench/noop_cpu.py --vhost consume --pairs 5 /tmp/base-tree /work/wt/mine

Each tree runs with its own bench/ and package first on PYTHONPATH (the interpreter is this one)."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

from common import BROKER, ctl, env_for, fill, fill_with_celery, median, tmpdir, write_config
from worker_throughput import drained


def drain_once(tree: pathlib.Path, url: str, config: pathlib.Path, n: int, flags: list[str]) -> tuple:
    fill_with_celery(url, "bench.noop", n)
    counter = tmpdir() / "counter"
    env = {**env_for(counter, url), "PYTHONPATH": f"{tree / 'bench'}{os.pathsep}{tree}"}
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "utilitarian", "worker", "--config", str(config), "-I",
                             "bench_tasks", "-Q", "default", *flags], env=env, cwd=tree,
                            stdout=open(counter.parent / "worker.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    first, done, cpu = drained(proc, counter, n)
    return cpu, n / max(1e-9, done - first), n / (done - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=pathlib.Path)
    parser.add_argument("--vhost", default="consume")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--flags", default="-c 2", help="worker flags (default: its defaults with -c 2)")
    args = parser.parse_args()
    url = f"{BROKER}/{args.vhost}"
    config = write_config(tmpdir(), url)
    fill(config, "bench.noop", 0)  # the topology only
    ctl("purge_queue", "-p", args.vhost, "utilitarian.tasks.default")
    for tree in args.trees:  # bytecode as an installed package has it (see worker_throughput.py)
        import compileall

        compileall.compile_dir(str(tree / "utilitarian"), quiet=1)
    rows: dict[pathlib.Path, list] = {tree: [] for tree in args.trees}
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for i in range(args.pairs):
        order = args.trees if i % 2 == 0 else list(reversed(args.trees))
        for tree in order:
            r = drain_once(tree, url, config, args.n, args.flags.split())
            rows[tree].append(r)
            print(f"{i} {tree}: CPU/task {r[0] * 1e6:6.1f} us  steady {r[1]:8,.0f}/s  end to end {r[2]:8,.0f}/s  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = None
    for tree, values in rows.items():
        cpu = median([v[0] for v in values])
        base = base or cpu
        print(f"median {tree}: CPU/task {cpu * 1e6:6.1f} us ({cpu / base:.3f} of the first)  steady "
              f"{median([v[1] for v in values]):8,.0f}/s  end to end {median([v[2] for v in values]):8,.0f}/s")


if __name__ == "__main__":
    main()
