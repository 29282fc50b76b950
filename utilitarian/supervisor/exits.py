"""The exit-code contract, per child exit (gunicorn's `if not worker.booted`): EX_CONFIG from a
child stops the master only while no child was ever ready since it started; after that a broker
refusal is transient, and the exit a crash respawned with backoff under the crash-loop limit."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

from utilitarian.errors import EX_CONFIG
from utilitarian.supervisor.records import State

STOP_CONFIG = "stop_config"  # the master stops with EX_CONFIG
CRASH = "crash"  # respawn with backoff; counts toward the crash loop
HEARTBEAT = "heartbeat"  # killed by us for silence: a crash of cause "heartbeat"
PLANNED = "planned"  # the exit we asked for (drain, recycle): its replacement is under way
STOPPING = "stopping"  # the worker stops: nothing to replace


@dataclass(frozen=True)
class Verdict:
    outcome: str
    level: int
    message: str


def judge_exit(label, code: int | None, *, state: State, stopping: bool, boot_failed: bool,
               ever_ready: bool) -> Verdict:
    """`code` as multiprocessing reports it: negative = killed by that signal, None = unknown."""
    sig = signal_name(-code) if code is not None and code < 0 else None
    expected = state in (State.DRAINING, State.STOPPING) or stopping
    outcome = STOPPING if stopping else PLANNED if expected else CRASH
    if state is State.ABORTED:
        return Verdict(STOPPING if stopping else HEARTBEAT, logging.WARNING,
                       f"child {label} ended by {sig or f'exit {code}'} after its heartbeat timeout; "
                       "its unacked messages will be redelivered")
    if sig is not None:
        if expected:
            return Verdict(outcome, logging.INFO, f"child {label} ended by {sig}")
        if -code == signal.SIGKILL:
            return Verdict(CRASH, logging.ERROR, f"child {label} was killed by SIGKILL (out of memory? check "
                                                 "`journalctl -k`); its unacked messages will be redelivered")
        return Verdict(CRASH, logging.WARNING, f"child {label} died by {sig}; its unacked messages will be redelivered")
    if code == EX_CONFIG or boot_failed:
        if not ever_ready:
            return Verdict(STOP_CONFIG, logging.ERROR, f"child {label} could not start (exit {code}): configuration "
                                                       "or credentials; stopping instead of respawning")
        if not expected:
            return Verdict(CRASH, logging.WARNING, f"child {label} exited {code} after the worker was ready: a "
                                                   "transient broker refusal, respawned with backoff")
    if code == 0 and expected:
        return Verdict(outcome, logging.INFO, f"child {label} exited after draining")
    if expected:
        return Verdict(outcome, logging.WARNING, f"child {label} exited with code {code} while draining")
    return Verdict(CRASH, logging.WARNING, f"child {label} exited unexpectedly with code {code}")


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)
