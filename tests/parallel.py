"""`./dev test` without arguments: the whole suite as a few pytest processes side by side.

Most of the suite waits on real processes, brokers and a booted systemd rather than on the CPU, so
groups that share nothing run in parallel even on 2 cores. Groups are disjoint by directory; the
last group is "everything else", so a new test directory is never left out. Each group's output is
printed whole when it ends, then one summary line per group; the exit status is the worst one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Balanced from `--durations=0` of a full run; keep each group's wall time near the others'.
# Private broker nodes (cluster) and the nspawn machine (system) live in one group of their own.
GROUPS = {
    "system+cluster": ["tests/system", "tests/integration/cluster", "tests/integration/beat",
                       "tests/integration/dashboard"],
    "amr": ["tests/integration/amr_faults", "tests/integration/amr_pipeline", "tests/integration/amr",
            "tests/unit"],
}
REST = "core"


def commands(extra: list[str]) -> dict[str, list[str]]:
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10", *extra]
    cmds = {name: base + paths for name, paths in GROUPS.items()}
    ignores = [f"--ignore={p}" for paths in GROUPS.values() for p in paths]
    cmds[REST] = base + ["tests", *ignores]
    # A base temp dir per group: pytest's own numbered dirs are pruned to the newest three, so
    # side by side one group could prune another's (and the journal a failure points to).
    return {name: cmd + [f"--basetemp={tempfile.mkdtemp(prefix=f'utilitarian-{name}-')}"]
            for name, cmd in cmds.items()}


def run(name: str, cmd: list[str], results: dict, lock: threading.Lock) -> None:
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as out:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        out.seek(0)
        text = out.read()
    took = time.monotonic() - started
    tail = text.strip().splitlines()[-1] if text.strip() else "(no output)"
    with lock:
        print(f"\n===== group {name}: exit {rc} after {took:.0f} s =====", flush=True)
        print(text, end="", flush=True)
        results[name] = (rc, took, tail)


def main(argv: list[str]) -> int:
    results: dict[str, tuple[int, float, str]] = {}
    lock = threading.Lock()
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(name, cmd, results, lock), name=name)
               for name, cmd in commands(argv).items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\n===== suite: {time.monotonic() - started:.0f} s in {len(threads)} parallel groups =====")
    worst = 0
    for name, (rc, took, tail) in results.items():
        print(f"{name:>16}: exit {rc}, {took:.0f} s: {tail}")
        # pytest's 5 (nothing collected) is a failure here: a group that runs no test is a mistake.
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
