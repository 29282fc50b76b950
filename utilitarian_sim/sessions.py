"""Session records per gateway: when each client connection started and ended.

Lets a test assert "never two sessions at once on a can_block interface" against the simulator's own
view, not the client's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Session:
    """One client connection to a gateway (wall-clock seconds since the epoch)."""

    gateway: str
    start: float
    end: float | None


class SessionLog:
    """Thread-safe start/end records. Starts and ends are paired first-in first-out: the pairing of
    anonymous connections can differ from reality, but overlap exists under any pairing exactly
    when two connections were open at the same time, which is what tests check."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, list[float]] = {}
        self._closed: list[Session] = []
        self._peak: dict[str, int] = {}

    def started(self, gateway: str) -> None:
        with self._lock:
            opened = self._open.setdefault(gateway, [])
            opened.append(self._clock())
            self._peak[gateway] = max(self._peak.get(gateway, 0), len(opened))

    def ended(self, gateway: str) -> None:
        with self._lock:
            opened = self._open.get(gateway)
            if opened:
                self._closed.append(Session(gateway, opened.pop(0), self._clock()))

    def sessions(self, gateway: str | None = None) -> list[Session]:
        """Closed sessions plus open ones (end=None), oldest first."""
        with self._lock:
            result = list(self._closed)
            for name, starts in self._open.items():
                result.extend(Session(name, s, None) for s in starts)
        if gateway is not None:
            result = [s for s in result if s.gateway == gateway]
        return sorted(result, key=lambda s: s.start)

    def peak_concurrency(self, gateway: str) -> int:
        """Most connections ever open at once on `gateway`."""
        with self._lock:
            return self._peak.get(gateway, 0)

    def overlaps(self, gateway: str, *, grace: float = 0.05) -> list[tuple[Session, Session]]:
        """Pairs of sessions on `gateway` that were open at the same time for more than `grace`
        seconds. The server notices a client's close a scheduling delay after the client does, so
        strictly sequential clients can look overlapped by a few milliseconds; `grace` absorbs that."""
        sessions = self.sessions(gateway)
        found = []
        for i, first in enumerate(sessions):
            first_end = first.end if first.end is not None else float("inf")
            for second in sessions[i + 1:]:
                if second.start >= first_end - grace:
                    break
                found.append((first, second))
        return found

    def open_count(self, gateway: str) -> int:
        with self._lock:
            return len(self._open.get(gateway, ()))
