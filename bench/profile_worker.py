"""Run `utilitarian worker ...` with cProfile in every thread of every child, for the benchmarks'
"where the CPU goes" tables. Each child writes `<dir>/child-<pid>.pstats` (every thread's profile
merged) when its run ends; `summarise(dir)` prints the merged table. The timer is each thread's
CPU time (`time.thread_time`): blocked time is not counted, waking up is; profiling costs several
times the CPU a child spends, so read the shares, not the absolute times.

    BENCH_PROFILE_DIR=/tmp/prof python bench/profile_worker.py worker -c 2 --threads 100 ...
    python bench/profile_worker.py --summary /tmp/prof [--per N] [--top 40]
"""

from __future__ import annotations

import cProfile
import os
import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's utilitarian


def _install_in_child(directory: pathlib.Path) -> None:
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profile(frame, event, arg):  # first event of a new thread: profile it from here
        prof = cProfile.Profile(time.thread_time)  # CPU of this thread, not wall time
        with lock:
            profiles.append(prof)
        sys.setprofile(None)  # this thread only; the hook stays for threads started later
        prof.enable()

    threading.setprofile(start_thread_profile)
    main = cProfile.Profile(time.thread_time)
    profiles.append(main)
    main.enable()

    from utilitarian.supervisor import child as child_module

    original = child_module.Child.run

    def run(self):
        try:
            return original(self)
        finally:
            import pstats

            with lock:
                taken = list(profiles)
            merged = None
            for prof in taken:
                prof.disable()
                try:
                    stats = pstats.Stats(prof)
                except TypeError:  # a thread that never called anything
                    continue
                merged = stats if merged is None else merged.add(stats)
            if merged is not None:
                merged.dump_stats(str(directory / f"child-{os.getpid()}.pstats"))

    child_module.Child.run = run


def summarise(directory: str, per: int = 1, top: int = 40) -> None:
    import pstats

    files = sorted(str(p) for p in pathlib.Path(directory).glob("child-*.pstats"))
    stats = pstats.Stats(*files)
    total = stats.total_tt
    print(f"# {len(files)} children, {total:.2f} profiled CPU-s"
          + (f" = {total / per * 1e6:.0f} us per unit of {per:,}" if per > 1 else ""))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--summary":
        rest = sys.argv[3:]
        per = int(rest[rest.index("--per") + 1]) if "--per" in rest else 1
        top = int(rest[rest.index("--top") + 1]) if "--top" in rest else 40
        summarise(sys.argv[2], per, top)
        return
    directory = pathlib.Path(os.environ["BENCH_PROFILE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    os.register_at_fork(after_in_child=lambda: _install_in_child(directory))
    from utilitarian.cli import main as cli_main

    sys.exit(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
