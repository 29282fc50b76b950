"""The `[amr]` section: retention, interface blocking, dispatch and publishing of the AMR pipeline.

Frozen dataclasses bound by `utilitarian.config_schema`, so bad keys are reported with their path
(`amr.publish.webhook_timeout: must be >= 0.1`). Days are floats like seconds are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from utilitarian.config_schema import setting
from utilitarian.errors import ConfigError
from utilitarian.plugins import ConfigSection

STAMP_CHOICES = ("slot", "poll")
EXCHANGE_TYPES = ("topic", "direct", "fanout", "headers")


def _check_http_url(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # the exception's text may quote the URL, token and all
        return "not a URL (a bad port or a bracket without its pair)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if port == 0:
        return "port must be between 1 and 65535"
    return None


def _check_exchange(name: str | None) -> str | None:
    if name is None:
        return None
    if not name or name.startswith("amq.") or len(name) > 255:
        return "must be 1-255 characters and not start with 'amq.' (reserved by RabbitMQ)"
    return None


@dataclass(frozen=True)
class PublishSettings:
    """Where committed readings go next. Neither set: nothing is published."""

    exchange: str | None = setting(None, check=_check_exchange,
                                   doc="exchange for new readings, declared durable on first use")
    exchange_type: str = setting("topic", choices=EXCHANGE_TYPES)
    id_type: str = setting("name", doc="the `id_type` field of each message: what `meter` holds")
    webhook_url: str | None = setting(None, secret=True, check=_check_http_url,
                                      doc="POST readings as JSON here (may carry a token)")
    webhook_timeout: float = setting(10.0, min=0.1, max=600.0, doc="seconds per HTTP request")
    webhook_retries: int = setting(5, min=0, max=100, doc="retries of a failed POST, with backoff")
    webhook_backoff: float = setting(5.0, min=0.1, max=3600.0,
                                     doc="seconds before the first retry; doubles each time")


@dataclass(frozen=True)
class AmrConfig:
    # Retention (cleanup.apply_retention, daily by beat). None keeps data forever.
    data_retention_days: float | None = setting(None, min=1.0, doc="readings and system events")
    staged_data_retention_days: float = setting(30.0, min=1.0, doc="readings of unknown meters")
    run_retention_days: float = setting(90.0, min=1.0, doc="task run records and rounds")
    cleanup_batch_size: int = setting(5000, min=100, max=1_000_000,
                                      doc="rows deleted per transaction (keeps locks short)")
    # Interfaces with can_block: one session at a time across all workers and hosts.
    interface_block_lease: float = setting(300.0, min=5.0, max=86400.0,
                                           doc="a crashed holder's block expires after this")
    interface_wait: float = setting(1.0, min=0.0, max=30.0,
                                    doc="a job finding the interface busy waits this long ...")
    interface_defer: float = setting(2.0, min=0.1, max=3600.0,
                                     doc="... then is re-queued with about this delay")
    # Dispatch and execution.
    dispatch_batch_size: int = setting(1000, min=1, max=100_000, doc="jobs per pipelined publish")
    stamp_scheduled_readings: str = setting(
        "slot", choices=STAMP_CHOICES,
        doc="timestamp of readings from scheduled polls: the round's slot (re-runs rewrite the same "
            "keys) or the poll time")
    commit_in_worker: bool = setting(True, doc="polls commit their results to the store in the polling "
                                              "process (false: through the commit queues)")
    store_pool_size: int = setting(8, min=1, max=200, doc="database connections per process")
    store_timeout: float = setting(30.0, min=0.1, max=3600.0,
                                   doc="wait for a connection or a lock before failing")
    store_unready_retry: float = setting(
        60.0, min=0.1, max=3600.0,
        doc="a store not ready (schema behind or ahead while `db migrate` runs, SQLite store of another "
            "host): jobs are deferred this long each time, up to 1000 times (~17 h), never dead-lettered for it")
    publish: PublishSettings = field(default_factory=PublishSettings)


def check_config(config) -> list[ConfigError]:
    """At `config check` and every process start (utilitarian.validation): a database URL the
    store cannot open. Found at run time it was "not retryable": every job of a round dead-lettered."""
    from utilitarian.amr.store.backend import database_location

    try:
        database_location(config.database_url())
    except ConfigError as exc:
        return [ConfigError(exc.reason, file=config.source, key="database.url")]
    return []


# Registered as the `[amr]` table through the `utilitarian.config` entry-point group.
CONFIG_SECTION = ConfigSection(AmrConfig, check_config=check_config)
