"""The project's exception hierarchy and the exit-code contract the CLI and the supervisor share."""

from __future__ import annotations

# sysexits.h codes: systemd units use RestartPreventExitStatus=78 so a bad deploy stops flapping.
# The worker's contract: 0 after a requested stop (TERM, QUIT, exit-when-idle); EX_CONFIG when a
# child could not boot and no child was ever ready since the master started (bad file, refused
# credentials: restarting cannot help); EX_SOFTWARE after a crash loop or a failure of the master
# itself (systemd restarts it). A child exiting EX_CONFIG after the worker was ready is a crash.
EX_OK = 0
EX_FAILURE = 1
EX_NOT_RUNNING = 3  # LSB "program is not running": `utilitarian status` found no worker
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UtilitarianError(Exception):
    """Base of every error we raise on purpose; `exit_code` is what the CLI exits with."""

    exit_code = EX_FAILURE


class ConfigError(UtilitarianError):
    """Bad configuration: names the file, the key path and the reason. Retrying cannot help."""

    exit_code = EX_CONFIG

    def __init__(self, reason: str, *, file: str | None = None, key: str | None = None):
        self.reason = reason
        self.file = file
        self.key = key
        super().__init__(self.render())

    def render(self) -> str:
        where = ": ".join(p for p in (self.file, self.key) if p)
        return f"{where}: {self.reason}" if where else self.reason


class ConfigErrors(ConfigError):
    """Several configuration errors found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        UtilitarianError.__init__(self, "\n".join(e.render() for e in self.errors))
        self.reason = str(self)
        self.file = errors[0].file if errors else None
        self.key = None

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class UsageError(UtilitarianError):
    """A command line that cannot be acted on."""

    exit_code = EX_USAGE


class BrokerError(UtilitarianError):
    """Anything that went wrong talking to RabbitMQ."""

    exit_code = EX_UNAVAILABLE


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or the connection dropped; retrying may help."""


class AuthenticationRefused(BrokerError):
    """The broker refused our credentials or vhost: a configuration fault, retrying cannot help."""

    exit_code = EX_CONFIG


class TLSRefused(BrokerError):
    """The broker's certificate failed verification (wrong CA, wrong host name): configuration."""

    exit_code = EX_CONFIG


class TopologyError(BrokerError):
    """A queue or exchange exists with other arguments (406) or is missing (404)."""

    exit_code = EX_CONFIG


class PublishError(BrokerError):
    """A publish was nacked, returned as unroutable, or not confirmed in time."""


