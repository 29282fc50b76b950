"""The child-to-master status pipe: JSON lines. A child's heartbeat is any line; events
("ready", "retire", "boot_failed") must arrive, periodic snapshots may be dropped when the
pipe is full (the next one carries the same cumulative figures).

Heartbeat fields the master reads (each optional, so an older child still works): stats,
inflight, idle, consuming, why (why not consuming), reconnects, cancels, dead_letter_failures
(cumulative counts), pending_later (work held for later: exit-when-idle waits)."""

from __future__ import annotations

import errno
import json
import os
import time


class StatusWriter:
    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)

    def _write(self, data: bytes, must_arrive: bool) -> bool:
        deadline = time.monotonic() + 2.0
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
                view = view[written:]
            except BlockingIOError:
                if not must_arrive and len(view) == len(data):
                    return False  # nothing written yet: drop this snapshot whole
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the master is gone; we will be stopped soon
                    return False
                raise
        return True

    def event(self, name: str, **fields) -> bool:
        return self._write((json.dumps({"e": name, **fields}, separators=(",", ":")) + "\n").encode(), True)

    def heartbeat(self, **fields) -> bool:
        return self._write((json.dumps({"e": "hb", **fields}, separators=(",", ":")) + "\n").encode(), False)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class StatusReader:
    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self._buffer = b""
        self.eof = False

    def read(self, max_bytes: int = 1 << 20) -> list[dict]:
        """Complete lines available now (at most about `max_bytes` per call, so that a child
        writing without pause cannot keep the master's loop here)."""
        chunks = []
        size = 0
        while size < max_bytes:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
            size += len(chunk)
        if not chunks:
            return []
        data = self._buffer + b"".join(chunks)
        *lines, self._buffer = data.split(b"\n")
        out = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a torn line from a killed child: the next heartbeat repeats it
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
