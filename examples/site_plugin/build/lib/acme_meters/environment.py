"""Execution environment `acme_counter`: ACME meters speak one UTF-8 line each way over TCP.

    request   READ <meter id>\n
    answer    OK <series>=<value> <unit>;<series>=<value> <unit>...\n   or   ERR <reason>\n
"""

from __future__ import annotations

from datetime import datetime

from utilitarian.amr.environments.params import Call, Param
from utilitarian.amr.errors import BadTaskCall, MeterProtocolError, MeterUnsupported
from utilitarian.amr.protocols.transport import Channel, TcpTransport
from utilitarian.amr.readings import PollResult, Reading, parse_number
from utilitarian.amr.target import COMMON_PARAMS, MeterTarget, UrlProtocol

PROTOCOLS = ("acme",)        # the MeterTarget.protocol values this environment can drive
DEFAULT_CALL = "read_all"    # what `utilitarian read acme+tcp://...` runs without --call


def _meter_id(text: str) -> str:
    if not text.isalnum() or len(text) > 16:
        raise ValueError("must be 1-16 letters or digits")
    return text


# acme+tcp://HOST:PORT?meter_id=A1 ; meter_id lands in MeterTarget.options
URL_PROTOCOL = UrlProtocol("acme", {"acme+tcp": "tcp"}, {**COMMON_PARAMS, "meter_id": _meter_id},
                           "acme_counter", default_port=7700, options=("meter_id",))


def _line(buffer: bytearray):
    """A pure extractor for Channel.receive: (bytes consumed, line) once a line is complete."""
    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > 4096:
            raise MeterProtocolError("answer longer than 4096 bytes without a newline")
        return None
    return end + 1, bytes(buffer[:end]).decode("utf-8", "replace").strip()


def read_all(target: MeterTarget, kwargs: dict, *, now: datetime, **_ignored) -> PollResult:
    meter_id = target.option("meter_id")
    if not meter_id:
        raise BadTaskCall("acme_counter", "read_all", "the URL needs ?meter_id=...")
    transport = TcpTransport(target.host, target.port)
    transport.open(target.timeout)
    try:
        # Channel bounds every wait by the read timeout and the whole session by session_timeout.
        channel = Channel(transport, timeout=target.timeout, deadline=_deadline(target))
        channel.send(f"READ {meter_id}\n".encode())
        answer = channel.receive(_line, "ACME answer")
    finally:
        transport.close()
    if answer.startswith("ERR "):
        raise MeterUnsupported(f"{target}: meter says {answer[4:60]!r}")
    if not answer.startswith("OK "):
        raise MeterProtocolError(f"{target}: not an ACME answer: {answer[:40]!r}")
    readings = []
    for item in filter(None, answer[3:].split(";")):
        series, _, rest = item.partition("=")
        value, _, unit = rest.partition(" ")
        number = parse_number(value)
        if not series or number is None:
            raise MeterProtocolError(f"{target}: bad item {item[:40]!r}")
        if kwargs["series"] is None or series in kwargs["series"]:
            readings.append(Reading(series, now.replace(microsecond=0), number, unit or None))
    return PollResult(tuple(readings))


def _deadline(target: MeterTarget) -> float:
    import time
    return time.monotonic() + target.session_timeout


CALLS = {
    "read_all": Call("read_all", read_all, (Param("series", "str_list"),),
                     "every value the meter reports (or only `series`)"),
}
