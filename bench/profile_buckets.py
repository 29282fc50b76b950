"""Where a child's CPU goes per poll, from profile_worker.py's files: the cumulative CPU of a few
functions that split the work, per poll (cumulative: nested rows are part of the row above, and
the lock-wait row overlaps the others) (the profiler's own overhead inflates every figure, about
3-4x here; compare shares and before/after, not absolute values).

    python bench/profile_buckets.py DIR POLLS
"""

from __future__ import annotations

import glob
import pstats
import sys

BUCKETS = [  # (label, file suffix, function name); first match of each wins
    ("consumer pump thread (pika frames, acks)", "broker/consumer.py", "run"),
    ("task runner around the task", "supervisor/runner.py", "_handle"),
    ("  execute_meter_task", "amr/tasks/execute.py", "execute_meter_task"),
    ("    job lookup (store)", "amr/tasks/execute.py", "_resolve"),
    ("    meter URL -> target", "amr/tasks/execute.py", "_target"),
    ("    poll (environment + protocol)", "amr/tasks/execute.py", "_poll"),
    ("      Modbus request/answer", "amr/protocols/modbus.py", "read_block"),
    ("    hand-over to the commit outbox", "amr/tasks/execute.py", "_finish"),
    ("  dispatch_schedule (the round's fan-out)", "amr/tasks/dispatch.py", "dispatch_schedule"),
    ("  dispatch's publishing threads", "amr/tasks/dispatch.py", "publish"),
    ("  commit tasks (save_meter_readings)", "amr/tasks/commits.py", "save_meter_readings"),
    ("  commit tasks (record_task_run)", "amr/tasks/commits.py", "record_task_run"),
    ("outbox flusher + store writer threads", "utilitarian/batching.py", "_loop"),
    ("in lock and queue waits, all threads (GIL hand-overs)", "~", "<method 'acquire' of '_thread.lock' objects>"),
    ("", "~", "<method 'get' of '_queue.SimpleQueue' objects>"),
]


def buckets(directory: str) -> tuple[float, dict[str, float]]:
    stats = pstats.Stats(*glob.glob(f"{directory}/child-*.pstats"))
    out: dict[str, float] = {}
    for (path, _line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():
        for label, suffix, func in BUCKETS:
            if name == func and path.endswith(suffix):
                key = label or "in lock and queue waits, all threads (GIL hand-overs)"
                out[key] = out.get(key, 0.0) + (tt if path == "~" else ct)
    return stats.total_tt, out


def main() -> None:
    directory, polls = sys.argv[1], int(sys.argv[2])
    total, found = buckets(directory)
    print(f"{'where (cumulative, per poll)':<50} {'us/poll':>8} {'share':>6}")
    for label, _, _ in BUCKETS:
        if label and label in found:
            print(f"{label:<50} {found[label] / polls * 1e6:>8.0f} {found[label] / total:>6.0%}")
    print(f"{'all profiled CPU of both children':<50} {total / polls * 1e6:>8.0f} {1:>6.0%}")


if __name__ == "__main__":
    main()
