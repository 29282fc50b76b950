"""Typed errors for everything that can go wrong talking to a meter.

The AMR pipeline turns these into system events and decides retries from `retryable`; the CLI
exits with `exit_code` (documented in `utilitarian read --help`).
"""

from __future__ import annotations

from utilitarian.errors import EX_FAILURE, EX_TEMPFAIL, EX_USAGE, UtilitarianError


class MeterError(UtilitarianError):
    """Base of every meter failure. `kind` is a short machine-readable name for events and metrics."""

    kind = "meter"
    retryable = False
    exit_code = EX_FAILURE

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class MeterTimeout(MeterError):
    """The meter (or its gateway) did not answer in time; the next attempt may succeed."""

    kind = "timeout"
    retryable = True
    # EX_TEMPFAIL: a script calling `utilitarian read` can tell "try again later" from "broken".
    exit_code = EX_TEMPFAIL


class MeterUnreachable(MeterTimeout):
    """Connection refused, reset or dropped, device path missing: retryable like a timeout."""


class MeterChecksumError(MeterError):
    """A block check character (or CRC) did not match after the allowed repeats."""

    kind = "checksum"


class MeterProtocolError(MeterError):
    """The meter answered, but not with anything the protocol allows."""

    kind = "protocol"


class MeterAuthenticationError(MeterError):
    """Password or lock refused. The message never contains the secret."""

    kind = "authentication"


class MeterUnsupported(MeterError):
    """The meter or its configuration cannot do what was asked (unknown register, function, type)."""

    kind = "unsupported"


class BadTaskCall(MeterError):
    """Unknown task_call or bad task_kwargs for an execution environment: a configuration fault."""

    kind = "bad_call"
    exit_code = EX_USAGE

    def __init__(self, execution_type: str, task_call: str, reason: str):
        self.execution_type = execution_type
        self.task_call = task_call
        self.reason = reason
        super().__init__(f"{execution_type}.{task_call}: {reason}")


