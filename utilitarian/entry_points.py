"""Entry points of the installed distributions, every group in one pass over sys.path, read
straight from each distribution's `entry_points.txt`. Measured first: importing importlib.metadata
(email, zipfile, csv, bz2, lzma, tempfile come with it) was ~25 ms CPU of a worker master's ~200 ms
start-up, and each of its per-group scans ~2 ms more, seven times over.

The answer is `importlib.metadata.entry_points()`'s for distributions installed as directories on
sys.path (tests/unit/core/test_entry_points.py compares the two, edge cases included): the same
`*.dist-info`/`*.egg-info` directories in the same order, the first distribution of a name wins.
Where that is not all there is (a zip archive or an `.egg` on sys.path, an import hook of its
own that finds distributions) it asks importlib.metadata instead.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NamedTuple, Sequence


class EntryPoint(NamedTuple):
    group: str
    name: str
    value: str
    distribution: str  # the distribution's Name (its METADATA), as importlib.metadata says it


def scan(path: Sequence[str] | None = None, *, groups: tuple[str, ...] | None = None) -> list[EntryPoint]:
    """Every entry point of the distributions on `path` (default sys.path), in importlib.metadata's
    order; only those of `groups` (by name or prefix ending in "."), when given."""
    path = list(sys.path if path is None else path)
    if not _plain_directories_only(path):
        return _from_importlib_metadata(path, groups)
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for entry in path:
        for name, info in _distributions_in(entry):
            if name in seen:  # importlib.metadata: the first distribution of a name hides the others
                continue
            seen.add(name)
            text = _read(os.path.join(info, "entry_points.txt"))
            if text is None:
                continue
            pairs = [(g, n, v) for g, n, v in parse(text) if _wanted(g, groups)]
            if pairs:
                dist = _dist_name(info)
                found += [EntryPoint(g, n, v, dist) for g, n, v in pairs]
    return found


def parse(text: str) -> list[tuple[str, str, str]]:
    """(group, name, value) of an entry_points.txt, parsed as importlib.metadata does (stripped
    lines, `#` comments, `[group]` headers, `name = value` split at the first `=`)."""
    pairs = []
    group = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line.strip("[]")
            continue
        name, sep, value = line.partition("=")
        if group is not None and sep:
            pairs.append((group, name.strip(), value.strip()))
    return pairs


def _plain_directories_only(path: list[str]) -> bool:
    """True when importlib.metadata would find nothing this module does not: its only finder of
    distributions is the path finder, and no sys.path entry is an archive or an egg."""
    import importlib.machinery

    for finder in sys.meta_path:
        if getattr(finder, "find_distributions", None) is not None and finder is not importlib.machinery.PathFinder:
            return False
    for entry in path:
        if not isinstance(entry, str) or entry.lower().endswith(".egg") or os.path.isfile(entry):
            return False
    return True


def _distributions_in(entry: str) -> list[tuple[str, str]]:
    """(normalized name, metadata directory) in importlib.metadata's order: grouped by name in
    the order names first appear in the listing."""
    try:
        children = os.listdir(entry or ".")
    except OSError:
        return []
    by_name: dict[str, list[str]] = {}
    for child in children:
        low = child.lower()
        if low.endswith((".dist-info", ".egg-info")):
            by_name.setdefault(_normalize(low.rpartition(".")[0].partition("-")[0]), []).append(
                os.path.join(entry, child))
    return [(name, info) for name, infos in by_name.items() for info in infos]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):  # absent, a directory, or an .egg-info that is a file
        return None


def _dist_name(info: str) -> str:
    """The Name header of METADATA (PKG-INFO for an egg-info), else the directory's stem."""
    for filename in ("METADATA", "PKG-INFO"):
        text = _read(os.path.join(info, filename))
        if text is None:
            continue
        for line in text.splitlines():
            if not line.strip():
                break  # the headers end at the first blank line
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == "name":
                return value.strip()
    return os.path.basename(info).rpartition(".")[0].partition("-")[0]


def _wanted(group: str, groups: tuple[str, ...] | None) -> bool:
    return groups is None or any(group == g or (g.endswith(".") and group.startswith(g)) for g in groups)


def _from_importlib_metadata(path: list[str], groups: tuple[str, ...] | None) -> list[EntryPoint]:
    import importlib.metadata

    found = []
    for dist in _unique(importlib.metadata.distributions(path=path)):
        for ep in dist.entry_points:
            if _wanted(ep.group, groups):
                found.append(EntryPoint(ep.group, ep.name, ep.value, dist.metadata["Name"] or "?"))
    return found


def _unique(dists):
    seen = set()
    for dist in dists:
        key = _normalize(getattr(dist, "_normalized_name", None) or dist.metadata["Name"] or "")
        if key not in seen:
            seen.add(key)
            yield dist
