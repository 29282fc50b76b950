"""Where and how to reach one meter: `MeterTarget`, parsed from the URL forms `utilitarian read` takes.

The password (a 62056-21 password or LIS-200 lock key) is kept on the target but never rendered:
repr, str and `url` mask it, so a target can be logged or put in an error message safely.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit

from utilitarian.errors import ConfigError

# Schemes come from the `utilitarian.read_schemes` entry points (UrlProtocol objects; ours are in
# url_protocols.py). IEC and Modbus targets have fields of their own; every other protocol's
# parameters travel in MeterTarget.options.
IEC_PROTOCOLS = ("iec62056-21", "lis200")
BAUDRATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


@dataclass(frozen=True)
class SerialSettings:
    """Line settings. For IEC over TCP they describe the line behind the transparent gateway."""

    baudrate: int
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True)
class UrlProtocol:
    """The URL schemes of one meter protocol, registered as a `utilitarian.read_schemes` entry
    point named after the protocol. `params` maps each accepted query parameter to a parser
    (text -> value, ValueError with the reason); `options` names those kept in
    MeterTarget.options (the rest are the common fields: timeout, session_timeout, tz, type,
    password, baud, retries); `check(values)` returns a reason to refuse a combination, or None."""

    name: str                                      # MeterTarget.protocol
    schemes: Mapping[str, str]                     # URL scheme -> transport ("tcp", "serial", ...)
    params: Mapping[str, Callable[[str], object]]
    execution_type: str                            # the environment `utilitarian read` uses
    default_port: int | None = None
    serial: SerialSettings | None = None           # line defaults of serial transports
    options: tuple[str, ...] = ()
    check: Callable[[dict], str | None] | None = None


def url_protocols() -> dict[str, UrlProtocol]:
    """Every registered protocol by name; a broken or foreign entry point is a ConfigError."""
    from utilitarian.plugins import READ_SCHEMES_GROUP, loaded

    found = loaded(READ_SCHEMES_GROUP)
    for name, spec in found.items():
        if not isinstance(spec, UrlProtocol) or spec.name != name:
            raise ConfigError(f"plugin {READ_SCHEMES_GROUP}:{name} is not a UrlProtocol named {name!r}")
    return found


_schemes: tuple[object, dict] | None = None  # (the protocols it was built from, the index)


def schemes() -> dict[str, tuple[UrlProtocol, str]]:
    """URL scheme -> (protocol, transport); a scheme claimed twice is a ConfigError. Built once
    per set of registered protocols (every poll parses its meter's URL)."""
    global _schemes
    from utilitarian.plugins import READ_SCHEMES_GROUP, loaded

    cached = _schemes
    if cached is not None and cached[0] is loaded(READ_SCHEMES_GROUP):  # the same (cached) plugins
        return cached[1]
    protocols = url_protocols()
    index = _index_schemes(protocols)
    _schemes = (protocols, index)
    return index


def _index_schemes(protocols: dict[str, UrlProtocol]) -> dict[str, tuple[UrlProtocol, str]]:
    index: dict[str, tuple[UrlProtocol, str]] = {}
    for spec in protocols.values():
        for scheme, transport in spec.schemes.items():
            if scheme in index:
                raise ConfigError(f"URL scheme {scheme!r} is declared by protocols "
                                  f"{index[scheme][0].name!r} and {spec.name!r}")
            index[scheme] = (spec, transport)
    return index


@dataclass(frozen=True, repr=False)
class MeterTarget:
    """A meter endpoint plus the knobs its protocol needs. Build with `parse_meter_url`."""

    protocol: str                      # "iec62056-21", "lis200" or "modbus"
    transport: str                     # "tcp", "serial" or "rtu-over-tcp"
    host: str | None = None
    port: int | None = None
    device: str | None = None          # serial device path
    address: str | None = None         # 62056-21 device address (needed on RS-485 and TCP)
    device_id: int | None = None       # Modbus unit id
    meter_type: str | None = None      # key into the meter types (register maps)
    serial: SerialSettings | None = None
    timeout: float = 3.0               # seconds: one read (first byte and gaps between bytes)
    session_timeout: float = 60.0      # seconds: the whole conversation, connect to close
    retries: int = 3                   # bounded repeats after NAK or a bad BCC
    max_baud: int | None = None        # cap for the 62056-21 baud switch (long or noisy lines)
    switch_delay: float = 0.0          # seconds between handing over the ACK and changing speed
    wakeup: bool = False               # battery meters: NUL bytes for ~2.2 s, then a pause
    timezone: str = "UTC"              # the meter's own clock (archives, set_time)
    # The driver may keep the connection open for later polls of this process (Modbus TCP only).
    # Not a URL parameter: the AMR task sets it for interfaces that are not `can_block`.
    reuse_connection: bool = False
    # Protocol parameters without a field of their own (DLMS, M-Bus, a site's schemes): validated
    # (name, value) pairs in URL order; the protocol's session reads them.
    options: tuple[tuple[str, object], ...] = ()
    password: str | None = field(default=None, compare=False)

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)

    @property
    def interface(self) -> str:
        """The network interface this meter shares with others: "host:port" or the device path."""
        if self.device:
            return self.device
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """Canonical URL, password masked."""
        return self.to_url(include_secret=False)

    def to_url(self, *, include_secret: bool = False) -> str:
        scheme, spec = next((s, p) for s, (p, t) in schemes().items()
                            if (p.name, t) == (self.protocol, self.transport))
        where = f"//{self.interface}" if self.host else f"//{self.device}"
        query: list[tuple[str, str]] = []
        if self.address:
            query.append(("address", self.address))
        if self.device_id is not None:
            query.append(("device_id", str(self.device_id)))
        if self.meter_type:
            query.append(("type", self.meter_type))
        query.extend((name, str(value).lower() if isinstance(value, bool) else str(value))
                     for name, value in self.options)
        if self.serial:
            line = spec.serial or SerialSettings(300, 7, "E", 1)
            defaults = (line.baudrate, line.bytesize, line.parity, line.stopbits)
            for name, value, default in zip(("baud", "bytesize", "parity", "stopbits"), (
                    self.serial.baudrate, self.serial.bytesize, self.serial.parity,
                    self.serial.stopbits), defaults):
                if value != default and (name == "baud" or self.protocol == "modbus"):
                    query.append((name, str(value)))
        if self.password:
            query.append(("password", self.password if include_secret else "***"))
        text = "&".join(f"{k}={quote(v, safe='*:/.-_')}" for k, v in query)
        return f"{scheme}:{where}" + (f"?{text}" if text else "")

    def with_secret(self, secret: str | None) -> MeterTarget:
        """The store keeps meter passwords apart from URLs; join them here."""
        return replace(self, password=secret) if secret is not None else self

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        parts = [f"{f}={getattr(self, f)!r}" for f in (
            "protocol", "transport", "host", "port", "device", "address", "device_id",
            "meter_type", "serial", "timeout", "session_timeout")]
        parts.append("password=" + ("'***'" if self.password else "None"))
        return f"MeterTarget({', '.join(parts)})"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _int_range(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value
    return parse


def _baud(text: str) -> int:
    value = int(text)
    if value not in BAUDRATES:
        raise ValueError(f"must be one of {', '.join(map(str, BAUDRATES))}")
    return value


def _parity(text: str) -> str:
    value = text.upper()[:1]
    if value not in ("N", "E", "O") or len(text) != 1:
        raise ValueError("must be N, E or O")
    return value


def _address(text: str) -> str:
    # 62056-21 allows up to 32 printable characters; '/', '!' and '?' would break the request frame.
    if not 0 < len(text) <= 32 or any(c in "/!?()" or not 32 < ord(c) < 127 for c in text):
        raise ValueError("must be 1-32 printable characters without / ! ? ( )")
    return text


def _timezone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a known time zone") from None
    return text


_COMMON = {"timeout": _positive_float, "session_timeout": _positive_float, "tz": _timezone,
           "password": str, "type": str}
COMMON_PARAMS = _COMMON  # what every protocol accepts: start a UrlProtocol's params from these
_PARAMS = {
    "iec62056-21": {**_COMMON, "address": _address, "baud": _baud, "max_baud": _baud,
                    "switch_delay": _non_negative_float, "wakeup": _bool,
                    "retries": _int_range(0, 10)},
    "modbus": {**_COMMON, "device_id": _int_range(0, 255), "baud": _baud,
               "bytesize": _int_range(7, 8), "parity": _parity, "stopbits": _int_range(1, 2),
               "retries": _int_range(0, 10)},
}
_PARAMS["lis200"] = _PARAMS["iec62056-21"]


# The forms a registry holds (`modbus+tcp://10.0.0.5:502?device_id=3&type=eastron_sdm630`, a serial
# device path): split by one regex instead of urlsplit + parse_qsl + hostname/port, which cost a poll
# more than the rest of its target (every poll of a round parses its meter's URL: the per-process
# target cache is cold). Only text that urlsplit and parse_qsl take verbatim matches: no percent
# escapes, "+", "@", brackets, fragments or other characters; anything else goes the general way.
# tests/unit/amr/test_meter_url_fast.py proves both ways give the same target or the same error.
_PLAIN_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(?:([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?/?"
                        r"|(/[A-Za-z0-9_./-]*))(?:\?([A-Za-z0-9_.=&/:,-]*))?\Z").match


class _PlainParts:
    """What parse_meter_url reads of a SplitResult, for a URL _PLAIN_URL split."""

    __slots__ = ("netloc", "path", "hostname", "port")

    def __init__(self, netloc: str, path: str, hostname: str | None, port: int | None):
        self.netloc, self.path, self.hostname, self.port = netloc, path, hostname, port


def _split_plain(text: str, known: dict) -> tuple | None:
    """(scheme, parts, pairs) as the general way would find them, or None: not a plain URL."""
    found = _PLAIN_URL(text)
    if found is None:
        return None
    scheme, host, port, path, query = found.groups()
    scheme = scheme.lower()
    if scheme not in known:
        return None  # the general way words the error
    pairs = []
    if query:
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if not eq:
                return None  # malformed: the general way says so
            pairs.append((name, value))
    if host is None:
        return scheme, _PlainParts("", path, None, None), pairs
    number = int(port) if port else None
    if number is not None and number > 65535:
        return None  # urlsplit refuses it: the general way says so
    return scheme, _PlainParts(f"{host}:{port}" if port else host, "", host.lower(), number), pairs


def parse_meter_url(url: str, *, secret: str | None = None, meter_type: str | None = None,
                    timezone: str | None = None, reuse_connection: bool = False) -> MeterTarget:
    """Parse e.g. `modbus+tcp://10.0.0.5:502?device_id=3&type=eastron_sdm630` into a MeterTarget.
    `meter_type` and `timezone` (the registry's) apply where the URL names no type and no zone
    but UTC; they are taken here rather than by a `dataclasses.replace` after, which cost a poll
    ~5 us.

    Raises ConfigError(key="url...") naming the bad part; never echoes a password.
    """
    def fail(reason: str, key: str = "url") -> ConfigError:
        return ConfigError(reason, key=key)

    text = url.strip()
    known = schemes()
    plain = _split_plain(text, known)
    if plain is not None:
        scheme, parts, pairs = plain
    else:
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise fail(f"not a URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in known:
            hint = difflib.get_close_matches(scheme, known, n=1)
            raise fail(f"unsupported scheme {scheme!r}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else f"; use one of {', '.join(known)}"))
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise fail("malformed query string") from None
    spec, transport = known[scheme]
    protocol = spec.name
    allowed = spec.params
    values: dict[str, object] = {}
    for name, raw in pairs:
        if name in values:
            raise fail(f"parameter {name!r} given twice", f"url.{name}")
        if name not in allowed:
            hint = difflib.get_close_matches(name, allowed, n=1)
            raise fail(f"unknown parameter {name!r} for {protocol}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else ""), f"url.{name}")
        try:
            values[name] = allowed[name](raw)
        except ValueError as exc:
            shown = "***" if name == "password" else repr(raw)
            raise fail(f"{name}={shown} {exc}", f"url.{name}") from None

    kwargs: dict[str, object] = {"protocol": protocol, "transport": transport}
    if transport == "serial":
        if parts.netloc or not parts.path or parts.path == "/":
            raise fail(f"{scheme} needs a device path: {scheme}:///dev/ttyUSB0")
        kwargs["device"] = parts.path
    else:
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise fail("port must be a number between 1 and 65535") from None
        if not host:
            raise fail(f"{scheme} needs host:port")
        if port == 0:  # urlsplit accepts it; nothing listens on port 0 (it crashed meters import)
            raise fail("port must be a number between 1 and 65535")
        if port is None:
            port = spec.default_port
            if port is None:
                raise fail(f"{scheme} needs a port: {scheme}://host:port")
        kwargs.update(host=host, port=port)
        if parts.path not in ("", "/"):
            raise fail(f"unexpected path {parts.path!r} in a TCP meter URL")

    if protocol in IEC_PROTOCOLS:
        kwargs["serial"] = SerialSettings(int(values.get("baud", 300)), 7, "E", 1)
        for name in ("address", "max_baud", "switch_delay", "wakeup", "retries"):
            if name in values:
                kwargs[name] = values[name]
    elif protocol != "modbus":
        kwargs["options"] = tuple((name, values[name]) for name in spec.options if name in values)
        if transport == "serial":
            line = spec.serial or SerialSettings(9600)
            kwargs["serial"] = replace(line, baudrate=int(values.get("baud", line.baudrate)))
        if "retries" in values:
            kwargs["retries"] = values["retries"]
        problem = spec.check(values) if spec.check else None
        if problem:
            raise fail(problem)
    else:
        kwargs["device_id"] = values.get("device_id", 1)
        if transport == "serial":
            kwargs["serial"] = SerialSettings(int(values.get("baud", 9600)),
                                              int(values.get("bytesize", 8)),
                                              str(values.get("parity", "N")),
                                              int(values.get("stopbits", 1)))
        # Modbus fails fast by default: the pipeline retries the whole poll with backoff.
        kwargs["retries"] = values.get("retries", 0)
    for name, key in (("timeout", "timeout"), ("session_timeout", "session_timeout"),
                      ("tz", "timezone"), ("type", "meter_type")):
        if name in values:
            kwargs[key] = values[name]
    if protocol == "modbus" and "timeout" not in values:
        kwargs["timeout"] = 2.0
    if meter_type and not kwargs.get("meter_type"):
        kwargs["meter_type"] = meter_type
    if timezone and kwargs.get("timezone", "UTC") == "UTC":
        kwargs["timezone"] = timezone
    if reuse_connection:
        kwargs["reuse_connection"] = True
    password = secret if secret is not None else values.get("password")
    if password is not None:
        kwargs["password"] = password
    return MeterTarget(**kwargs)  # type: ignore[arg-type]
