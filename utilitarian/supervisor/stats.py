"""Task counters and duration histograms: kept by each child, sent to the master in its
heartbeats, summed by the master (retired children included) for status and metrics."""

from __future__ import annotations

import bisect
import collections
import threading
import time

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# done: returned; retried: raised, sent again later; failed: dead-lettered after its last try;
# refused: never run (protocol, unknown task, poison); deferred: resource busy, sent again later.
OUTCOMES = ("done", "retried", "failed", "refused", "deferred")
REFUSED_TASK = "<refused>"  # label for names we refused: wire input must not grow our label set


class TaskStats:
    """Child side: thread-safe cumulative counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.hist: dict[tuple[str, str], list] = {}

    def record(self, queue: str, task: str, outcome: str, duration: float | None = None) -> None:
        with self._lock:
            self.counts[(queue, task, outcome)] += 1
            if duration is not None:
                h = self.hist.get((queue, task))
                if h is None:
                    h = self.hist[(queue, task)] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
                h[0][bisect.bisect_left(BUCKETS, duration)] += 1
                h[1] += duration
                h[2] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "c": [[q, t, o, n] for (q, t, o), n in self.counts.items()],
                "h": [[q, t, list(h[0]), h[1], h[2]] for (q, t), h in self.hist.items()],
            }

    def total(self, *outcomes: str) -> int:
        with self._lock:
            return sum(n for (_, _, o), n in self.counts.items() if not outcomes or o in outcomes)


def totals_of(snapshot: dict | None) -> dict[str, int]:
    out = {o: 0 for o in OUTCOMES}
    for _q, _t, outcome, n in (snapshot or {}).get("c", ()):
        out[outcome] = out.get(outcome, 0) + n
    return out


class Aggregate:
    """Master side: the latest snapshot per live child plus everything retired children did."""

    def __init__(self):
        self.live: dict[int, dict] = {}
        self.retired_counts: collections.Counter = collections.Counter()
        self.retired_hist: dict[tuple[str, str], list] = {}
        self.samples: collections.deque = collections.deque(maxlen=40)

    def update(self, pid: int, snapshot: dict) -> None:
        self.live[pid] = snapshot

    def retire(self, pid: int) -> None:
        snap = self.live.pop(pid, None)
        if snap:
            self._add(snap, self.retired_counts, self.retired_hist)

    @staticmethod
    def _add(snap: dict, counts, hist) -> None:
        for q, t, o, n in snap.get("c", ()):
            counts[(q, t, o)] += n
        for q, t, buckets, total, count in snap.get("h", ()):
            h = hist.get((q, t))
            if h is None:
                h = hist[(q, t)] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
            for i, n in enumerate(buckets):
                h[0][i] += n
            h[1] += total
            h[2] += count

    def merged(self) -> tuple[collections.Counter, dict]:
        counts = collections.Counter(self.retired_counts)
        hist = {k: [list(v[0]), v[1], v[2]] for k, v in self.retired_hist.items()}
        for snap in self.live.values():
            self._add(snap, counts, hist)
        return counts, hist

    def totals(self) -> dict[str, int]:
        counts, _ = self.merged()
        out = {o: 0 for o in OUTCOMES}
        for (_q, _t, o), n in counts.items():
            out[o] = out.get(o, 0) + n
        return out

    def sample(self, now: float | None = None) -> None:
        """Remember the finished-task total now; `rate()` uses the last minute of samples."""
        t = self.totals()
        self.samples.append((now if now is not None else time.monotonic(), sum(t.values())))

    def rate(self, window: float = 60.0) -> float:
        if len(self.samples) < 2:
            return 0.0
        newest_t, newest_n = self.samples[-1]
        for t, n in self.samples:
            if newest_t - t <= window:
                span = newest_t - t
                return (newest_n - n) / span if span > 0 else 0.0
        return 0.0
