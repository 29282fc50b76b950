"""Metrics that task code counts in a worker child (AMR polls, readings, interface waits, round
progress...), with no dependency: a family is declared once with its help text and labels, counted
under a lock, and sent to the master in the child's heartbeats (cumulative figures, so a dropped
heartbeat loses nothing). The master keeps the latest snapshot per child plus what retired
children counted (`Merged`) and renders them on its metrics page (`render`).

Counters and histograms are summed over children; a gauge says how it combines (`sum`: waiting
jobs; `max`: the same store figure read by every child, e.g. a round's progress). Label values
must come from a bounded set (protocol names, outcomes), never from the wire or a meter."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PREFIX = "utilitarian_"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...]
    merge: str = "sum"  # gauges: "sum" or "max" over children
    buckets: tuple[float, ...] = ()

    def inc(self, *values: str, n: float = 1.0) -> None:
        REGISTRY.add(self, values, n)

    def dec(self, *values: str, n: float = 1.0) -> None:
        REGISTRY.add(self, values, -n)

    def set(self, *values: str, value: float) -> None:
        REGISTRY.put(self, values, value)

    def observe(self, *values: str, value: float) -> None:
        REGISTRY.observe(self, values, value)


class Registry:
    """The families and values of this process (one per worker child)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.families: dict[str, Family] = {}
        self.values: dict[tuple[str, tuple], object] = {}

    def declare(self, family: Family) -> Family:
        with self._lock:
            known = self.families.setdefault(family.name, family)
        if known != family:
            raise ValueError(f"metric {family.name} declared twice, differently")
        return known

    def add(self, family: Family, values: tuple, n: float) -> None:
        with self._lock:
            key = (family.name, tuple(str(v) for v in values))
            self.values[key] = float(self.values.get(key, 0.0)) + n

    def put(self, family: Family, values: tuple, value: float) -> None:
        with self._lock:
            self.values[(family.name, tuple(str(v) for v in values))] = float(value)

    def observe(self, family: Family, values: tuple, value: float) -> None:
        with self._lock:
            key = (family.name, tuple(str(v) for v in values))
            h = self.values.get(key)
            if h is None:
                h = self.values[key] = [[0] * (len(family.buckets) + 1), 0.0, 0]
            h[0][bisect.bisect_left(family.buckets, value)] += 1
            h[1] += value
            h[2] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"f": {f.name: [f.kind, f.help, list(f.labels), f.merge, list(f.buckets)]
                          for f in self.families.values()},
                    "v": [[name, list(labels), v if not isinstance(v, list) else [list(v[0]), v[1], v[2]]]
                          for (name, labels), v in self.values.items()]}


REGISTRY = Registry()


def counter(name: str, help: str, labels=()) -> Family:
    return REGISTRY.declare(Family(PREFIX + name, "counter", help, tuple(labels)))


def gauge(name: str, help: str, labels=(), merge: str = "sum") -> Family:
    return REGISTRY.declare(Family(PREFIX + name, "gauge", help, tuple(labels), merge))


def histogram(name: str, help: str, labels=(), buckets=DURATION_BUCKETS) -> Family:
    return REGISTRY.declare(Family(PREFIX + name, "histogram", help, tuple(labels), buckets=tuple(buckets)))


class Merged:
    """Master side: the latest snapshot per live child, plus the counters and histograms of
    children that exited (their gauges leave with them)."""

    def __init__(self):
        self.live: dict[int, dict] = {}
        self.families: dict[str, list] = {}
        self.retired: dict[tuple[str, tuple], object] = {}

    def update(self, cid: int, snapshot) -> None:
        if isinstance(snapshot, dict):
            self.live[cid] = snapshot
            self.families.update(snapshot.get("f") or {})

    def retire(self, cid: int) -> None:
        snap = self.live.pop(cid, None)
        if snap:
            self._add(snap, self.retired, cumulative_only=True)

    def _add(self, snap: dict, into: dict, *, cumulative_only: bool = False) -> None:
        for name, labels, value in snap.get("v") or ():
            meta = self.families.get(name)
            if meta is None:
                continue
            kind, merge = meta[0], meta[3]
            if cumulative_only and kind == "gauge":
                continue
            key = (name, tuple(labels))
            if kind == "histogram":
                h = into.get(key)
                if h is None:
                    h = into[key] = [[0] * len(value[0]), 0.0, 0]
                for i, n in enumerate(value[0][:len(h[0])]):
                    h[0][i] += n
                h[1] += value[1]
                h[2] += value[2]
            elif kind == "gauge" and merge == "max":
                into[key] = max(float(into.get(key, value)), float(value))
            else:
                into[key] = float(into.get(key, 0.0)) + float(value)

    def merged(self) -> dict[tuple[str, tuple], object]:
        out: dict = {k: (v if not isinstance(v, list) else [list(v[0]), v[1], v[2]]) for k, v in self.retired.items()}
        for snap in self.live.values():
            self._add(snap, out)
        return out


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(worker: str, merged: Merged) -> list[str]:
    """Exposition lines of every family the children declared, `worker` label first."""
    values = merged.merged()
    lines: list[str] = []
    w = _label(worker)
    for name in sorted(merged.families):
        kind, text, label_names, _merge, buckets = merged.families[name]
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for (fname, labels), value in sorted((k, v) for k, v in values.items() if k[0] == name):
            base = ",".join([f'worker="{w}"'] + [f'{k}="{_label(v)}"' for k, v in zip(label_names, labels)])
            if kind != "histogram":
                lines.append(f"{name}{{{base}}} {_number(value)}")
                continue
            cumulative = 0
            for bound, n in zip(buckets, value[0]):
                cumulative += n
                lines.append(f'{name}_bucket{{{base},le="{bound}"}} {cumulative}')
            cumulative += value[0][-1]
            lines.append(f'{name}_bucket{{{base},le="+Inf"}} {cumulative}')
            lines.append(f"{name}_sum{{{base}}} {_number(value[1])}")
            lines.append(f"{name}_count{{{base}}} {value[2]}")
    return lines


def _number(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
