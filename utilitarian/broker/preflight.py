"""`utilitarian config check --connect`: asks the broker whether it accepts what the configuration
says (credentials, vhost, TLS, permissions, the type and arguments of queues that already exist)
before a unit is started with it, and explains each refusal in one line. Changes nothing a worker
relies on: the permission probe uses an exclusive queue that vanishes with the connection, and
queues are only compared (a declare with identical arguments is a no-op; a different one is refused).
"""

from __future__ import annotations

import logging
import secrets
import ssl
from dataclasses import dataclass

from utilitarian import queues
from utilitarian.broker import delay
from utilitarian.broker.connection import BrokerSettings, translate
from utilitarian.broker.topology import QUEUE_TYPES, QueueTypeMismatch, expected_arguments, probe_queue_type
from utilitarian.errors import EX_CONFIG, EX_OK, EX_UNAVAILABLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One line of the report; `code` is what it contributes to the exit code (0, 69 or 78)."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return self.code == EX_OK


def exit_code(findings: list[Finding]) -> int:
    """78 when the broker refused anything of the configuration (restarting cannot help), else 69
    when it could not be reached at all, else 0."""
    codes = {f.code for f in findings}
    return EX_CONFIG if EX_CONFIG in codes else EX_UNAVAILABLE if EX_UNAVAILABLE in codes else EX_OK


def checked_queues(task_queues=queues.QUEUES) -> list[str]:
    """What `topology declare` declares and a worker consumes or publishes to."""
    return [*task_queues, queues.DEAD_LETTER, *(delay.level_queue(level) for level in range(delay.LEVELS))]


def check_broker(settings: BrokerSettings, task_queues=queues.QUEUES) -> list[Finding]:
    import pika

    try:
        connection = pika.BlockingConnection(settings.pika_parameters(name="utilitarian config check"))
    except Exception as exc:  # pika raises many types; explain_refusal sorts them
        return [explain_refusal(exc, settings)]
    try:
        tls = " over TLS (certificate verified)" if settings.tls and settings.tls_verify else \
            " over TLS (certificate NOT verified: [broker.tls] verify = false)" if settings.tls else ""
        found = [Finding(EX_OK, f"connected to {settings.where} as user {settings.username!r}{tls}")]
        found += check_permissions(connection, settings)
        found += check_queues(connection, settings, checked_queues(task_queues))
        return found
    except Exception as exc:  # the connection dropped half-way: say so instead of a traceback
        return [Finding(EX_UNAVAILABLE, f"{settings.where}: the check stopped: {translate(exc, settings)}")]
    finally:
        try:
            connection.close()
        except Exception:  # already broken; nothing left to close
            log.debug("closing the check's connection failed", exc_info=True)


def explain_refusal(exc: BaseException, settings: BrokerSettings) -> Finding:
    """One line for a failed connection attempt, naming what to fix (never the password)."""
    import pika.exceptions as pe

    user, vhost, where = settings.username, settings.vhost, settings.where
    text = str(exc)
    tls_error = _tls_error(exc)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return Finding(EX_CONFIG, f"{where}: the broker's TLS certificate was not accepted "
                                  f"({tls_error.verify_message}): check [broker.tls] ca and the host name in the URL")
    if tls_error is not None:
        return Finding(EX_CONFIG, f"{where}: the TLS handshake failed ({tls_error}): is this port a TLS listener "
                                  "(amqps:// is usually port 5671)? check the URL and [broker.tls]")
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        if not settings.password:
            return Finding(EX_CONFIG, f"{where}: the password is empty and the broker refused user {user!r}: "
                                      "write it to the file [broker] password_file names "
                                      "(/etc/utilitarian/broker-password on a server)")
        return Finding(EX_CONFIG, f"{where}: the broker refused user {user!r} with this password (ACCESS_REFUSED): "
                                  "check the user in [broker] url and the password file")
    if isinstance(exc, pe.ProbableAccessDeniedError) or (
            isinstance(exc, pe.ConnectionClosedByBroker) and exc.reply_code == 530):
        if "is down" in text:
            return Finding(EX_UNAVAILABLE, f"{where}: vhost {vhost!r} is down (the broker is restarting it); "
                                           "try again in a moment")
        if "not found" in text:
            return Finding(EX_CONFIG, f"{where}: vhost {vhost!r} does not exist on the broker: create it "
                                      f"(rabbitmqctl add_vhost {vhost}) or fix the vhost in [broker] url")
        if "refused for user" in text:
            return Finding(EX_CONFIG, f"{where}: user {user!r} has no permissions on vhost {vhost!r}: "
                                      f"rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'")
        return Finding(EX_CONFIG, f"{where}: the broker refused access to vhost {vhost!r} for user {user!r}")
    reason = next((f"cannot reach {where}: {a}" for a in _causes(exc) if isinstance(a, OSError)), None)
    return Finding(EX_UNAVAILABLE, f"{reason or translate(exc, settings)} (is the broker running, and the host and port "
                                   "in [broker] url right?)")


def _causes(exc: BaseException) -> list:
    """pika raises socket and SSL errors raw or wrapped in AMQPConnectionError's args (one per
    host), whose connector errors hold the OSError in `.exception`."""
    seen, todo = [], [exc]
    while todo and len(seen) < 20:
        e = todo.pop(0)
        seen.append(e)
        for arg in (*getattr(e, "args", ()), getattr(e, "exception", None), e.__cause__, e.__context__):
            for a in (arg if isinstance(arg, (list, tuple)) else [arg]):
                if isinstance(a, BaseException) and a not in seen:
                    todo.append(a)
    return seen


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    return next((e for e in _causes(exc) if isinstance(e, ssl.SSLError)), None)


def check_permissions(connection, settings: BrokerSettings) -> list[Finding]:
    """configure, write and read as a worker needs them, on a throwaway exclusive queue named like
    ours (permission patterns such as '^utilitarian\\.' match it) and the default exchange, which
    retries and dead letters are published to."""
    import pika.exceptions as pe

    probe = f"utilitarian.preflight.{secrets.token_hex(4)}"
    vhost, user = settings.vhost, settings.username
    grant = f"rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'"
    steps = (("configure", "declare queues (the worker declares its topology at start)",
              lambda ch: ch.queue_declare(probe, exclusive=True, auto_delete=True)),
             ("write", "publish (tasks, retries, dead letters)",
              lambda ch: (ch.confirm_delivery(), ch.basic_publish("", probe, b"utilitarian config check",
                                                                  mandatory=True))),
             ("read", "consume (the worker's queues)", lambda ch: ch.basic_get(probe, auto_ack=True)))
    channel = connection.channel()
    for permission, why, step in steps:
        try:
            step(channel)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code != 403:
                raise
            return [Finding(EX_CONFIG, f"user {user!r} may not {why} on vhost {vhost!r}: the broker refused "
                                       f"{permission} ({exc.reply_text}); {grant}")]
    channel.close()
    return [Finding(EX_OK, f"user {user!r} may configure, write and read on vhost {vhost!r}")]


def check_queues(connection, settings: BrokerSettings, names: list[str]) -> list[Finding]:
    """Each queue that exists must have the type `[broker] queue_type` asks for and our arguments
    (a worker or `topology declare` would stop with exit 78 on it); missing ones are declared at
    the first start and are fine."""
    import pika.exceptions as pe

    wanted = settings.queue_type
    problems: list[Finding] = []
    present = 0
    channel = connection.channel()
    for name in names:
        if not channel.is_open:
            channel = connection.channel()
        try:
            channel.queue_declare(name, passive=True)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            continue
        present += 1
        ours = expected_arguments(name)
        candidates = {t: ours[t] for t in sorted(QUEUE_TYPES, key=lambda t: t != wanted)}
        found = probe_queue_type(connection, name, candidates)
        if found in (None, wanted):  # None: deleted between the two looks, declared at start
            continue
        if found in QUEUE_TYPES:
            problems.append(Finding(EX_CONFIG, str(QueueTypeMismatch(name, found, wanted))))
        else:
            problems.append(Finding(EX_CONFIG, f"queue {name!r} exists with other arguments than utilitarian "
                                               f"declares for a {wanted} queue ({ours[wanted] or 'none'}): a worker "
                                               "would stop on it (406 PRECONDITION_FAILED); delete it if it is "
                                               "empty, or move its messages first"))
    if problems:
        return problems
    if not present:
        return [Finding(EX_OK, f"none of the {len(names)} queues exists yet: the first start declares them "
                               f"({wanted})")]
    missing = len(names) - present
    return [Finding(EX_OK, f"{present} of {len(names)} queues exist, as {wanted} queues with utilitarian's "
                           f"arguments" + (f"; {missing} will be declared at the first start" if missing else ""))]
