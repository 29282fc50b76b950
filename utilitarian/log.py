"""Logging setup for every process, and the masking that keeps secrets out of log lines."""

from __future__ import annotations

import logging
import os
import re
import sys
import urllib.parse

# URL-looking runs in free text (log lines, error messages); each is masked by mask_url.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*")
# Query parameters that carry credentials in URLs we did not mark secret (a webhook in a log line).
_SECRET_PARAM = re.compile(r"token|key|secret|pass|pwd|sig|auth|credential|session", re.IGNORECASE)
MASK = "****"


def mask_url(url: str, *, secret: bool = False) -> str:
    """One URL with its secrets replaced: `amqp://guest:****@host/`. The one masker for every output.

    The user info ends at the LAST '@' before the query, so a password holding a raw '@' or '/' is
    masked whole (the old pattern stopped at its first '@' and printed the rest). Query values of
    credential-like parameters (token, key, sig, ...) are masked; with `secret` (a field marked
    secret, such as `amr.publish.webhook_url`) every query value is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK if secret else url
    rest, hash_, fragment = rest.partition("#")
    head, question, query = rest.partition("?")
    userinfo, at, hostpart = head.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if colon:
            head = f"{user}:{MASK}@{hostpart}"
    if query:
        query = "&".join(_mask_param(p, secret) for p in query.split("&"))
    if fragment and secret:
        fragment = MASK
    return f"{scheme}://{head}{question}{query}{hash_}{fragment}"


def _mask_param(pair: str, everything: bool) -> str:
    name, eq, value = pair.partition("=")
    if not eq:
        return MASK if everything and name else pair
    return f"{name}={MASK}" if value and (everything or _SECRET_PARAM.search(name)) else pair


def mask_text(text: str) -> str:
    """Every URL in `text` (a log line, an error message) through mask_url."""
    return _URL.sub(lambda m: mask_url(m.group(0)), text) if "://" in text else text


def url_host(url: str) -> str:
    """A URL reduced to host:port for log lines that need to say where, never who."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    except ValueError:
        return "?"


class MaskingFilter(logging.Filter):
    """Last line of defence: masks URL passwords that reached a log record anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
                record.args = None
            except (TypeError, ValueError):
                return True
        if isinstance(record.msg, str) and "://" in record.msg:
            record.msg = mask_text(record.msg)
        if record.exc_info and not record.exc_text:
            # An exception's text may quote a URL too; formatted once here, the handler reuses it.
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        return True


class TaskContextFilter(logging.Filter):
    """Adds `task` (`name[id]`) to records emitted while a task runs in this thread."""

    def __init__(self, local):
        super().__init__()
        self.local = local

    def filter(self, record: logging.LogRecord) -> bool:
        current = getattr(self.local, "task", None)
        record.task = f" [{current}]" if current else ""
        return True


LEVELS = ("debug", "info", "warning", "error", "critical")


def enable_stack_dumps() -> None:
    """On SIGABRT (a watchdog or the master giving up on a silent process), SIGSEGV and the like,
    write every thread's stack to stderr (the journal) before dying. Skipped when stderr is not
    a real file (captured by a test runner)."""
    import faulthandler

    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError+ValueError
        pass


def setup_logging(level: str = "info", *, fmt: str = "text", process_name: str | None = None,
                  task_local=None) -> None:
    """Configure the root logger for this process (called again in each child after fork)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    # Under journald the journal stamps time and pid itself; elsewhere we do.
    under_journal = bool(os.environ.get("JOURNAL_STREAM")) and not sys.stderr.isatty()
    name = process_name or "%(processName)s"
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif under_journal:
        handler.setFormatter(logging.Formatter(f"{name}[%(process)d] %(levelname)s %(name)s: %(message)s%(task)s"))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s%(task)s"))
    handler.addFilter(MaskingFilter())
    handler.addFilter(TaskContextFilter(task_local) if task_local is not None else _NoTask())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pika logs every reconnect attempt at ERROR with tracebacks; we log our own line per attempt.
    logging.getLogger("pika").setLevel(logging.CRITICAL if level.lower() != "debug" else logging.INFO)


class _NoTask(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.task = ""
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        doc = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "pid": record.process, "msg": record.getMessage()}
        task = getattr(record, "task", "")
        if task:
            doc["task"] = task.strip(" []")
        if record.exc_info:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)  # masked by MaskingFilter
        return json.dumps(doc, ensure_ascii=False)


def flush_all() -> None:
    """Before os._exit in a forked process: what the handlers and std streams hold would be lost."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a closed stream at exit: nothing more to save
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
