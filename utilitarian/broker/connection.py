"""Connection parameters from a broker URL (amqp/amqps, several hosts, TLS), connecting with a
capped backoff, and the translation of pika's exceptions into ours at this boundary."""

from __future__ import annotations

import dataclasses
import logging
import random
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

from utilitarian.errors import AuthenticationRefused, BrokerUnavailable, ConfigError, TLSRefused, TopologyError

log = logging.getLogger(__name__)

SCHEMES = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class BrokerSettings:
    """Everything a process needs to open connections; safe to pass across fork (no sockets)."""

    hosts: tuple[tuple[str, int], ...]
    username: str
    password: str = dataclasses.field(repr=False)
    vhost: str = "/"
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = dataclasses.field(default=None, repr=False)
    tls_verify: bool = True
    tls_server_hostname: str | None = None
    heartbeat: float = 30.0
    connection_timeout: float = 10.0
    blocked_connection_timeout: float = 60.0
    confirm_timeout: float = 30.0
    retry_backoff_max: float = 30.0
    queue_type: str = "classic"  # "classic" | "quorum": how the topology is declared and consumed

    @property
    def where(self) -> str:
        """Host list and vhost for log lines: never the credentials."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        return f"{hosts}{'/' if self.vhost == '/' else '/' + self.vhost}"

    def pika_parameters(self, *, heartbeat: float | None = None, name: str = "utilitarian") -> list:
        """One pika ConnectionParameters per host; pika tries them in order."""
        import pika

        credentials = pika.PlainCredentials(self.username, self.password, erase_on_connect=False)
        ssl_options = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            if not self.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        hb = self.heartbeat if heartbeat is None else heartbeat
        params = []
        for host, port in self.hosts:
            if self.tls:
                ssl_options = pika.SSLOptions(context, self.tls_server_hostname or host)
            params.append(pika.ConnectionParameters(
                host=host, port=port, virtual_host=self.vhost, credentials=credentials,
                heartbeat=int(round(hb)), socket_timeout=self.connection_timeout,
                stack_timeout=self.connection_timeout * 2, connection_attempts=1,
                blocked_connection_timeout=self.blocked_connection_timeout,
                ssl_options=ssl_options, client_properties={"connection_name": name}))
        return params


def check_url(url: str) -> str | None:
    """Config check: an error text for a URL we cannot use, else None."""
    try:
        parse_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def parse_url(url: str) -> tuple[str, tuple[tuple[str, int], ...], str, str, str]:
    """(scheme, hosts, user, password, vhost) from `amqp[s]://user:pw@h1[:p1][,h2[:p2]]/vhost`."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("broker URL must look like amqp://user:password@host:5672/vhost")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"broker URL scheme must be amqp or amqps, not {scheme!r}")
    netloc, _, path = rest.partition("/")
    if "@" not in netloc and "@" in path:
        # Said without quoting: any part of this URL may be a piece of the password.
        raise ValueError("broker URL: a '/' in the user name or password must be percent-encoded (%2F)")
    path, _, _query = path.partition("?")
    userinfo, at, hostpart = netloc.rpartition("@")
    if not at:
        userinfo, hostpart = "", netloc
    user, _, password = userinfo.partition(":")
    user = urllib.parse.unquote(user) or "guest"
    password = urllib.parse.unquote(password) if userinfo else "guest"
    hosts = []
    for item in hostpart.split(","):
        item = item.strip()
        if not item:
            raise ValueError("broker URL has an empty host")
        if item.startswith("["):  # [ipv6]:port
            host, bracket, after = item[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                # "[::1:5672" passed before and failed at every connect: the job's whole round
                # was dead-lettered while `config check` said the file was fine.
                raise ValueError(f"broker URL host {item!r} is not [IPv6 address] or [IPv6 address]:port")
            _check_ipv6(host)
            port_text = after[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError("broker URL has an empty host")
        try:
            port = int(port_text) if port_text else SCHEMES[scheme]
        except ValueError:
            raise ValueError(f"broker URL port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"broker URL port {port} is out of range")
        hosts.append((host, port))
    vhost = urllib.parse.unquote(path) if path else "/"
    return scheme, tuple(hosts), user, password, vhost


def _check_ipv6(host: str) -> None:
    import ipaddress

    try:
        ipaddress.IPv6Address(host.partition("%")[0])  # a zone (fe80::1%eth0) is the kernel's
    except ValueError:
        raise ValueError(f"broker URL host [{host}] is not an IPv6 address") from None


def replace_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostpart = netloc.rpartition("@")
    user = userinfo.partition(":")[0] if at else "guest"
    hostpart = hostpart if at else netloc
    return f"{scheme}://{user}:{urllib.parse.quote(password, safe='')}@{hostpart}{slash}{tail}"


def settings_from_config(config) -> BrokerSettings:
    """BrokerSettings from a loaded Config (the URL with its password resolved from files)."""
    url = config.broker_url()
    try:
        scheme, hosts, user, password, vhost = parse_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc), file=config.source, key="broker.url") from None
    b = config.broker
    return BrokerSettings(
        hosts=hosts, username=user, password=password, vhost=vhost,
        tls=scheme == "amqps" or b.tls.enabled, tls_ca=b.tls.ca, tls_cert=b.tls.cert, tls_key=b.tls.key,
        tls_verify=b.tls.verify, tls_server_hostname=b.tls.server_hostname, heartbeat=b.heartbeat,
        connection_timeout=b.connection_timeout, blocked_connection_timeout=b.blocked_connection_timeout,
        confirm_timeout=b.confirm_timeout, retry_backoff_max=b.retry_backoff_max, queue_type=b.queue_type)


def settings_from_url(url: str, **overrides) -> BrokerSettings:
    scheme, hosts, user, password, vhost = parse_url(url)
    return BrokerSettings(hosts=hosts, username=user, password=password, vhost=vhost,
                          tls=scheme == "amqps", **overrides)


def translate(exc: BaseException, settings: BrokerSettings | None = None) -> Exception:
    """Map a pika exception to ours; the caller raises the result `from None`. The broker's reply
    code, when there is one, travels as `reply_code` (404 and 406 call for different answers)."""
    err = _translate(exc, settings)
    code = getattr(exc, "reply_code", None)
    if isinstance(code, int) and getattr(err, "reply_code", None) is None and err is not exc:
        err.reply_code = code
    return err


def _vhost_down(exc: BaseException) -> bool:
    # RabbitMQ refuses connections to a vhost whose processes are (re)starting with 541
    # "access to vhost 'x' refused for user 'u': vhost 'x' is down", which pika reports as a
    # probable access denial; the vhost comes back by itself (or with `restart_vhost`).
    return "is down" in str(exc) and ("541" in str(exc) or "INTERNAL_ERROR" in str(exc))


def _translate(exc: BaseException, settings: BrokerSettings | None) -> Exception:
    import pika.exceptions as pe

    where = settings.where if settings else "the broker"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSRefused(f"{where}: the broker's TLS certificate was not accepted ({exc.verify_message}); "
                          "check [broker.tls] ca and the host name in the URL")
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return AuthenticationRefused(f"{where} refused the credentials (check user and password)")
    if isinstance(exc, pe.ProbableAccessDeniedError):
        if _vhost_down(exc):
            return BrokerUnavailable(f"{where}: vhost is down (the broker is restarting it)")
        return AuthenticationRefused(f"{where}: access to the vhost was refused")
    if isinstance(exc, pe.ConnectionClosedByBroker):
        if exc.reply_code in (403, 530):
            return AuthenticationRefused(f"{where} refused access: {exc.reply_text}")
        return BrokerUnavailable(f"{where} closed the connection: {exc.reply_code} {exc.reply_text}")
    if isinstance(exc, pe.ChannelClosedByBroker):
        if exc.reply_code in (404, 406, 403):
            return TopologyError(f"{where}: {exc.reply_code} {exc.reply_text}")
        return BrokerUnavailable(f"{where}: channel closed: {exc.reply_code} {exc.reply_text}")
    if isinstance(exc, pe.AMQPConnectionError):
        detail = _first_cause(exc)
        return BrokerUnavailable(f"cannot reach {where}: {detail}")
    if isinstance(exc, (pe.AMQPError, OSError)):
        return BrokerUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else BrokerUnavailable(str(exc))


def _first_cause(exc: BaseException) -> str:
    # AMQPConnectionError wraps a list of per-host errors in args; show the first readable one.
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, (list, tuple)) and arg:
            arg = arg[0]
        text = str(arg).strip()
        if text:
            return text
    return type(exc).__name__


class Backoff:
    """Capped exponential backoff with full jitter; `reset()` once the connection proved healthy."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


def connect_blocking(settings: BrokerSettings, *, name: str = "utilitarian", heartbeat: float | None = None,
                     attempts: int | None = None, stop: threading.Event | None = None):
    """A pika BlockingConnection, retrying unreachable brokers with a capped backoff.

    Refused credentials raise AuthenticationRefused at once: retrying cannot help.
    `attempts=None` retries until `stop` is set (then BrokerUnavailable is raised).
    """
    import pika

    backoff = Backoff(cap=settings.retry_backoff_max)
    tried = 0
    while True:
        tried += 1
        try:
            return pika.BlockingConnection(settings.pika_parameters(heartbeat=heartbeat, name=name))
        except Exception as exc:  # pika raises many types; translate decides
            err = translate(exc, settings)
            if not isinstance(err, BrokerUnavailable):
                raise err from None
            if attempts is not None and tried >= attempts:
                raise err from None
            delay = backoff.next_delay()
            log.warning("%s; retrying in %.1fs (attempt %d)", err, delay, tried)
            if stop is not None:
                if stop.wait(delay):
                    raise err from None
            else:
                time.sleep(delay)
