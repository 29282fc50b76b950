"""`systemctl reload` of a worker waits for the master's answer: ExecReload= runs
`python -m utilitarian.supervisor.reload_client $MAINPID`, which sends the master SIGHUP and
watches its reload counters on the control socket. A file the master refuses fails the reload
(exit 78, the reason on stderr, so in the journal) while the worker keeps its old configuration;
a plain `kill -HUP` would have let systemd log "Reloaded" either way. Why not check the file in
ExecReload= instead: systemd 252 gives ExecReload= no $CREDENTIALS_DIRECTORY (so no password), and
only the master knows everything it refuses."""

from __future__ import annotations

import os
import signal
import sys
import time

from utilitarian.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE
from utilitarian.supervisor.control import discover, query

TIMEOUT = 60.0  # seconds for the master to answer; it loads the file from its loop, well within this
POLL = 0.1  # seconds between looks at the counters


def verdict(before: dict, now: dict) -> str | None:
    """"ok" or "failed" once the master counted a reload after `before`, else None (still loading).
    A failure wins when both moved (a HUP of someone else's in between)."""
    if now.get("failed", 0) > before.get("failed", 0):
        return "failed"
    if now.get("ok", 0) > before.get("ok", 0):
        return "ok"
    return None


def find_socket(runtime_dir: str, pid: int) -> str | None:
    """The control socket of the master with this pid (every worker of the host shares the dir)."""
    for path in discover(runtime_dir):
        try:
            if query(path, timeout=2.0).get("pid") == pid:
                return path
        except (OSError, ValueError):  # a stale socket of a stopped worker
            continue
    return None


def reload_master(pid: int, runtime_dir: str, *, timeout: float = TIMEOUT, clock=time.monotonic,
                  sleep=time.sleep) -> tuple[int, str]:
    """(exit code, message). Without a control socket the HUP is sent without waiting (exit 0)."""
    path = find_socket(runtime_dir, pid)
    if path is None:
        os.kill(pid, signal.SIGHUP)
        return EX_OK, f"no control socket of pid {pid} under {runtime_dir}: sent SIGHUP without waiting for the answer"
    before = query(path).get("reloads") or {}
    os.kill(pid, signal.SIGHUP)
    deadline = clock() + timeout
    while clock() < deadline:
        sleep(POLL)
        try:
            doc = query(path)
        except (OSError, ValueError) as exc:
            return EX_UNAVAILABLE, f"the master stopped answering during the reload: {exc}"
        outcome = verdict(before, doc.get("reloads") or {})
        if outcome == "ok":
            return EX_OK, ""
        if outcome == "failed":
            return EX_CONFIG, (f"reload refused, the worker keeps running its old configuration: "
                               f"{doc.get('reload_error') or 'see the journal'}")
    return EX_SOFTWARE, f"the master did not answer the reload within {timeout:.0f}s"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m utilitarian.supervisor.reload_client MAINPID", file=sys.stderr)
        return EX_USAGE
    # systemd sets $RUNTIME_DIRECTORY for every command of a unit with RuntimeDirectory=.
    runtime_dir = (os.environ.get("RUNTIME_DIRECTORY") or "/run/utilitarian").split(":")[0]
    code, message = reload_master(int(argv[0]), runtime_dir)
    if message:
        print(message, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
