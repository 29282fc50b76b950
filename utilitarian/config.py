"""The one TOML file: where it is found, its sections as frozen dataclasses, and its validation.

Search order: `--config`, then `$UTILITARIAN_CONFIG`, then /etc/utilitarian/utilitarian.toml, then
built-in defaults (so the CLI works on a developer machine with no file at all).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from utilitarian import queues
from utilitarian.config_schema import Binder, _join, setting
from utilitarian.errors import ConfigError, ConfigErrors
from utilitarian.plugins import config_sections

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SYSTEM_CONFIG = "/etc/utilitarian/utilitarian.toml"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_timezone(name: str) -> str | None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (an IANA name such as 'Europe/Stockholm' or 'UTC')"
    return None


def _check_queue_list(names: list[str]) -> str | None:
    errors = [e for e in (queues.check_queue(n) for n in names) if e]
    if not names:
        return "must name at least one queue"
    return "; ".join(errors) or None


def _check_optional_queue(name: str | None) -> str | None:
    return queues.check_queue(name) if name else None


def _check_broker_url(url: str | None) -> str | None:
    if url is None:
        return None
    from utilitarian.broker.connection import check_url

    return check_url(url)


def _check_cron(expr: str) -> str | None:
    from utilitarian.beat.cron import check_cron

    return check_cron(expr)


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = setting(False, doc="use TLS even for an amqp:// URL (amqps:// implies it)")
    ca: str | None = setting(None, doc="CA bundle that signed the broker's certificate")
    cert: str | None = setting(None, doc="client certificate (for EXTERNAL auth or mutual TLS)")
    key: str | None = setting(None, secret=True, doc="client key file")
    verify: bool = setting(True, doc="verify the broker's certificate and host name")
    server_hostname: str | None = setting(None, doc="name to verify instead of the URL's host")


@dataclass(frozen=True)
class BrokerConfig:
    url: str | None = setting(None, secret=True, check=_check_broker_url,
                              doc="amqp[s]://user:password@host:port/vhost; several hosts separated by ','")
    url_file: str | None = setting(None, doc="file holding the URL (keeps the password out of this file)")
    password_file: str | None = setting(None, doc="file holding the password, replacing the URL's")
    heartbeat: float = setting(30.0, min=0.0, max=3600.0, doc="AMQP heartbeat in seconds (0 = off)")
    connection_timeout: float = setting(10.0, min=0.1, max=600.0, doc="TCP+AMQP handshake timeout")
    blocked_connection_timeout: float = setting(60.0, min=1.0, max=3600.0,
                                                doc="drop a connection the broker blocked (memory alarm) this long")
    confirm_timeout: float = setting(30.0, min=0.1, max=3600.0, doc="how long a publish waits for its confirm")
    retry_backoff_max: float = setting(30.0, min=0.1, max=3600.0, doc="cap of the reconnect backoff")
    queue_type: str = setting("classic", choices=("classic", "quorum"),
                              doc="classic (Celery's default) or quorum (replicated, for a RabbitMQ cluster)")
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str | None = setting(None, secret=True,
                              doc="sqlite:///path or postgresql://...; default: <state_dir>/utilitarian.sqlite3")


@dataclass(frozen=True)
class PathsConfig:
    state_dir: str | None = setting(None, doc="default $STATE_DIRECTORY, /var/lib/utilitarian or ~/.local/state")
    runtime_dir: str | None = setting(None, doc="default $RUNTIME_DIRECTORY, /run/utilitarian or $XDG_RUNTIME_DIR")


@dataclass(frozen=True)
class PoolConfig:
    queues: list[str] = setting(check=_check_queue_list, doc="queues this pool consumes")
    processes: int = setting(1, min=1, max=256)
    threads: int | None = setting(None, min=1, max=1000, doc="default: [worker] queue_threads / threads")
    prefetch_multiplier: float | None = setting(None, min=1.0, max=100.0,
                                                doc="default: [worker] prefetch_multiplier")
    max_tasks_per_child: int | None = setting(None, min=0)
    max_memory_per_child: float | None = setting(None, min=0.0, doc="MiB of RSS before a child is recycled")
    hard_time_limit: float | None = setting(None, min=0.1)
    name: str | None = setting(None)


@dataclass(frozen=True)
class ProfileConfig:
    pools: list[PoolConfig] = setting(doc="one [[workers.<profile>.pools]] table per pool")
    graceful_timeout: float | None = setting(None, min=0.0)
    exit_when_idle: float | None = setting(None, min=0.1)
    imports: list[str] = setting(default_factory=list)


# Every task gets a hard limit, below RabbitMQ's consumer_timeout (default 30 min): a task that
# never returns must not hold its delivery until the broker closes the channel, which redelivers
# every message of that child (docs/operations.md, "Time limits").
DEFAULT_HARD_TIME_LIMIT = 1500.0
DEFAULT_PREFETCH_MULTIPLIER = 4.0
RABBITMQ_CONSUMER_TIMEOUT = 1800.0


@dataclass(frozen=True)
class WorkerConfig:
    imports: list[str] = setting(default_factory=list, doc="extra task modules, like celery --include")
    processes: int | None = setting(None, min=1, max=256, doc="default: number of CPUs")
    threads: int = setting(8, min=1, max=1000)
    queue_threads: dict[str, int] = setting(default_factory=dict, doc="default threads per queue")
    # Unacked messages a child may hold = threads x this. Above 1, fast tasks find the next message
    # already delivered instead of waiting a round trip per ack (docs/operations.md, "Prefetch").
    prefetch_multiplier: float = setting(DEFAULT_PREFETCH_MULTIPLIER, min=1.0, max=100.0,
                                         doc="messages a child holds = threads x this (1 = one per thread)")
    graceful_timeout: float = setting(30.0, min=0.0, max=86400.0)
    heartbeat_timeout: float = setting(30.0, min=1.0, max=3600.0, doc="a child silent this long is killed")
    max_tasks_per_child: int = setting(0, min=0, doc="0 = unlimited")
    max_memory_per_child: float = setting(0.0, min=0.0, doc="MiB, 0 = unlimited")
    hard_time_limit: float = setting(DEFAULT_HARD_TIME_LIMIT, min=0.1, max=86400.0,
                                     doc="default hard limit for every task; keep it below RabbitMQ's "
                                         "consumer_timeout (30 min by default)")
    max_deliveries: int = setting(5, min=1, max=1000, doc="deliveries before a message is poison")
    max_message_bytes: int = setting(4 * 1024 * 1024, min=1024, doc="bigger bodies are dead-lettered")
    restart_backoff_max: float = setting(30.0, min=0.0, max=3600.0)
    crash_loop_limit: int = setting(10, min=1, doc="crashes within crash_loop_window that stop the master")
    crash_loop_window: float = setting(60.0, min=1.0)
    control_socket: str | None = setting(None, doc="default <runtime_dir>/worker-<name>.sock")
    metrics_port: int | None = setting(None, min=0, max=65535)
    metrics_host: str = setting("127.0.0.1")


@dataclass(frozen=True)
class BeatConfig:
    lock_heartbeat: float = setting(10.0, min=1.0, max=600.0,
                                    doc="heartbeat of the lock connection; a silently dead leader holds the lock up to 2x this")
    retry_interval: float = setting(3.0, min=0.1, max=600.0, doc="standby re-tries the lock this often")
    retry_jitter: float = setting(1.0, min=0.0, max=600.0)
    builtin_schedules: bool = setting(True, doc="include the AMR and cleanup schedules")
    max_catch_up: int = setting(1000, min=1, doc="most missed slots one entry fires at once")
    metrics_port: int | None = setting(None, min=0, max=65535, doc="serve the beat's Prometheus metrics here")
    metrics_host: str = setting("127.0.0.1")


@dataclass(frozen=True)
class ScheduleEntry:
    cron: str = setting(check=_check_cron, doc="5 fields, a 6th for seconds, or @hourly/@daily/...")
    task: str = setting(doc="registered task name")
    args: list[Any] = setting(default_factory=list)
    kwargs: dict[str, Any] = setting(default_factory=dict)
    queue: str | None = setting(None, check=_check_optional_queue, doc="default: the task's route")
    timezone: str = setting("UTC", check=_check_timezone)
    expires: float | None = setting(None, min=0.0, doc="seconds after the slot the fire is void")
    misfire_grace: float = setting(300.0, min=0.0, doc="a slot later than this is skipped")
    coalesce: bool = setting(True, doc="several missed slots fire once (the latest)")
    enabled: bool = setting(True)
    slot_kwarg: str | None = setting(None, doc="pass the slot (ISO UTC) to the task under this name")


@dataclass(frozen=True)
class TaskOptions:
    queue: str | None = setting(None, check=_check_optional_queue)
    max_retries: int | None = setting(None, min=0, max=1000)
    retry_backoff: float | None = setting(None, min=0.0, doc="first retry delay; doubles each retry")
    retry_backoff_max: float | None = setting(None, min=0.0)
    retry_jitter: bool | None = setting(None)
    soft_time_limit: float | None = setting(None, min=0.1)
    time_limit: float | None = setting(None, min=0.1)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("info", choices=LOG_LEVELS)
    format: str = setting("text", choices=("text", "json"))


@dataclass(frozen=True)
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    workers: dict[str, ProfileConfig] = field(default_factory=dict)
    beat: BeatConfig = field(default_factory=BeatConfig)
    schedule: dict[str, ScheduleEntry] = field(default_factory=dict)
    tasks: dict[str, TaskOptions] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Tables added by plugins (utilitarian.plugins, group utilitarian.config), by name: `[amr]`
    # and `[meter_types]` come from our AMR package that way. Read them as attributes.
    sections: Mapping[str, Any] = field(default_factory=dict, metadata={"flatten": True})
    source: str | None = None  # the file this came from, None for built-in defaults

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: plugin sections read like core ones (config.amr).
        sections = self.__dict__.get("sections")
        if sections is not None and not name.startswith("__") and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!s} has no section or attribute {name!r}")

    # --- derived values -------------------------------------------------------------------
    def broker_url(self) -> str:
        return _resolve_broker_url(self)

    def state_dir(self) -> str:
        return self.paths.state_dir or _default_dir("STATE_DIRECTORY", "/var/lib/utilitarian", "state")

    def runtime_dir(self) -> str:
        return self.paths.runtime_dir or _default_dir("RUNTIME_DIRECTORY", "/run/utilitarian", "runtime")

    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{os.path.join(self.state_dir(), 'utilitarian.sqlite3')}"

    def threads_for(self, queue_names: list[str]) -> int:
        """Default thread count for a pool: the largest per-queue default among its queues."""
        per_queue = [self.worker.queue_threads.get(q) or self.worker.queue_threads.get(queues.short_name(q))
                     for q in queue_names]
        chosen = [t for t in per_queue if t]
        return max(chosen) if chosen else self.worker.threads


def find_config_file(explicit: str | None, env: dict | None = None) -> str | None:
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("UTILITARIAN_CONFIG"):
        return env["UTILITARIAN_CONFIG"]
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return None


def load_config(path: str | None = None, *, env: dict | None = None) -> Config:
    """Find, parse and validate the config; raises ConfigError/ConfigErrors (exit 78)."""
    file = find_config_file(path, env)
    if file is None:
        return parse_config({}, file=None)
    try:
        with open(file, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except PermissionError:
        raise ConfigError("permission denied", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a TOML file", file=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid TOML: not UTF-8 text", file=file) from None
    return parse_config(raw, file=file)


def parse_config(raw: dict, *, file: str | None = None) -> Config:
    from utilitarian.beat.builtin import merged_schedule_tables

    raw = dict(raw)
    raw["schedule"] = merged_schedule_tables(raw)
    plugin_sections = config_sections()
    binder = Binder(file)
    sections: dict[str, Any] = {}
    for name, section in plugin_sections.items():
        value = raw.pop(name, None)
        if section.schema is None:
            if value is not None and not isinstance(value, dict):
                binder.error(name, f"expected a table, got {type(value).__name__}")
            sections[name] = section.default() if value is None else value
        else:
            sections[name] = binder.bind(section.schema, {} if value is None else value, name)
    core = {k: v for k, v in raw.items() if k not in ("source", "sections")}
    bound = binder.bind(Config, core, "")
    for key in ("source", "sections"):
        if key in raw:
            binder.error(key, "unknown key")
    if binder.errors:
        raise ConfigErrors(binder.errors)
    return finish(dataclasses.replace(bound, sections=sections), file)


def finish(config: Config, file: str | None) -> Config:
    """Cross-field checks that a single field's validator cannot make."""
    config = dataclasses.replace(config, source=file)
    errors: list[ConfigError] = []
    b = config.broker
    if b.url and b.url_file:
        errors.append(ConfigError("give url or url_file, not both", file=file, key="broker.url_file"))
    for key in ("url_file", "password_file"):
        path = getattr(b, key)
        if path:
            expanded = expand_path(path, file)
            if not os.path.isfile(expanded):
                errors.append(ConfigError(f"file {expanded!r} does not exist", file=file, key=f"broker.{key}"))
            elif not os.access(expanded, os.R_OK):
                errors.append(ConfigError(f"file {expanded!r} is not readable", file=file, key=f"broker.{key}"))
    for key in ("ca", "cert", "key"):
        path = getattr(b.tls, key)
        if path and not os.path.isfile(expand_path(path, file)):
            errors.append(ConfigError(f"file {path!r} does not exist", file=file, key=f"broker.tls.{key}"))
    for q in config.worker.queue_threads:
        reason = queues.check_queue(q)
        if reason:
            errors.append(ConfigError(reason, file=file, key=_join("worker.queue_threads", q)))
    for name, profile in config.workers.items():
        if not profile.pools:
            errors.append(ConfigError("a profile needs at least one [[pools]] table", file=file,
                                      key=f"workers.{name}.pools"))
    for name, section in config_sections().items():
        if section.check is not None:
            errors.extend(section.check(config.sections[name], file))
    if not errors:
        try:
            _resolve_broker_url(config)
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigErrors(errors)
    return config


def expand_path(path: str, config_file: str | None) -> str:
    """$VARS expanded; `${CREDENTIALS_DIRECTORY}` outside a systemd unit (an operator's shell)
    means the config file's directory, where LoadCredential= takes the file from."""
    if "CREDENTIALS_DIRECTORY" not in os.environ and config_file:
        home = os.path.dirname(os.path.abspath(config_file))
        path = path.replace("${CREDENTIALS_DIRECTORY}", home).replace("$CREDENTIALS_DIRECTORY", home)
    return os.path.expandvars(path)


def _resolve_broker_url(config: Config) -> str:
    b = config.broker
    if b.url_file:
        path = expand_path(b.url_file, config.source)
        url = _read_file(path, config.source, "broker.url_file").strip()
        reason = _check_broker_url(url)
        if reason:
            raise ConfigError(f"{reason} (in {path})", file=config.source, key="broker.url_file")
    else:
        url = b.url or os.environ.get("UTILITARIAN_BROKER_URL") or DEFAULT_BROKER_URL
    if b.password_file:
        path = expand_path(b.password_file, config.source)
        password = _read_file(path, config.source, "broker.password_file").strip("\r\n")
        from utilitarian.broker.connection import replace_password

        url = replace_password(url, password)
    return url


def _read_file(path: str, file: str | None, key: str) -> str:
    """A secret file's text; unreadable or not UTF-8 is a ConfigError (exit 78: a traceback's 70
    made systemd restart-loop). The content is never quoted: it is a password or a URL."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror}", file=file, key=key) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path!r} is not UTF-8 text (byte {exc.start})", file=file, key=key) from None


def _default_dir(env_name: str, system: str, kind: str) -> str:
    env = os.environ.get(env_name)
    if env:
        return env.split(":")[0]
    if os.access(os.path.dirname(system), os.W_OK) and (not os.path.exists(system) or os.access(system, os.W_OK)):
        return system
    if kind == "runtime" and os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "utilitarian")
    if kind == "runtime":
        return f"/tmp/utilitarian-{os.getuid()}"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "utilitarian")
