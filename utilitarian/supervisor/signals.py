"""Signals in a process whose loop acts: handlers only record the signal and wake the loop
through a pipe registered with `signal.set_wakeup_fd`."""

from __future__ import annotations

import collections
import os
import signal

MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
                  signal.SIGTTOU, signal.SIGCHLD)


class SignalQueue:
    def __init__(self, signals=MASTER_SIGNALS):
        self.pending: collections.deque = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.signals = signals

    def install(self) -> None:
        for sig in self.signals:
            signal.signal(sig, self._record)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _record(self, signum, frame) -> None:
        self.pending.append(signum)

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def pop_all(self) -> list[int]:
        out = []
        while self.pending:
            out.append(self.pending.popleft())
        return out

    def uninstall_in_child(self) -> None:
        """After fork: default dispositions, no wakeup fd, close the master's pipe."""
        signal.set_wakeup_fd(-1)
        for sig in self.signals:
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
