"""IEC 62056-21 framing, pure: request/ACK/command builders, identification parsing, frame extraction, BCC.

Extractors take the receive buffer and return (bytes consumed, value) or None for "need more";
anything malformed raises MeterProtocolError, so arbitrary input can only end in a typed error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from utilitarian.amr.errors import MeterProtocolError, MeterUnsupported

SOH, STX, ETX, EOT, ACK, NAK = 0x01, 0x02, 0x03, 0x04, 0x06, 0x15
CRLF = b"\r\n"

# Mode C baud rate characters (62056-21 section 6.4.14); letters A-I announce mode B.
BAUD_CHARS = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
CHAR_FOR_BAUD = {v: k for k, v in BAUD_CHARS.items()}
MODE_READOUT, MODE_PROGRAMMING = "0", "1"

# Bounds that keep a babbling line from growing the buffer without end.
MAX_NOISE = 512            # bytes tolerated before "/" or a frame start (modem chatter, echoes)
MAX_IDENT_LINE = 100       # "/XXXZ\W" + identification (16 by the standard; meters exceed it)
MAX_FRAME = 1 << 20        # one data message or partial block


def bcc(data: bytes) -> int:
    """Block check character: XOR of every byte after SOH/STX up to and including ETX/EOT.

    Folded as one big integer, halving its width each step: log2(n) operations in C instead of a
    Python step per byte (a data message is kilobytes)."""
    width = len(data)
    value = int.from_bytes(data, "big")
    while width > 1:
        half = (width + 1) // 2
        value = (value >> (8 * half)) ^ (value & ((1 << (8 * half)) - 1))
        width = half
    return value


@dataclass(frozen=True)
class Identification:
    """The meter's "/XXXZ\\Wident" line."""

    manufacturer: str
    baud_char: str
    enhanced: str          # characters after backslashes ("2" = mode E capable), "" if none
    ident: str

    @property
    def baudrate(self) -> int:
        return BAUD_CHARS[self.baud_char]

    @property
    def reaction_time(self) -> float:
        """Seconds to wait before answering: 20 ms if the third letter is lower case, else 200 ms."""
        return 0.02 if self.manufacturer[2].islower() else 0.2

    def __str__(self) -> str:
        enhanced = "".join("\\" + c for c in self.enhanced)
        return f"/{self.manufacturer}{self.baud_char}{enhanced}{self.ident}"


@dataclass(frozen=True)
class Frame:
    """ACK, NAK, or a block: `command` is set for SOH blocks ("P0", "R1", "B0"), empty for STX
    blocks. `final` is False for a partial block ended by EOT. `bcc_ok` is False on a BCC mismatch."""

    kind: str                 # "ack", "nak" or "block"
    command: str = ""
    payload: bytes = b""
    final: bool = True
    bcc_ok: bool = True


def build_request(address: str | None = None) -> bytes:
    """`/?address!CRLF`; the address is required on RS-485 buses and through TCP gateways."""
    return b"/?" + (address or "").encode("ascii") + b"!" + CRLF


def build_option_select(baud_char: str, mode: str, protocol: str = "0") -> bytes:
    """ACK V Z Y CRLF: protocol control V, baud rate Z, mode Y (0 readout, 1 programming)."""
    return bytes([ACK]) + (protocol + baud_char + mode).encode("ascii") + CRLF


def build_command(command: str, payload: bytes | None = None) -> bytes:
    """SOH C D [STX payload] ETX BCC, e.g. command "R1" with payload b"1.8.0()"."""
    body = command.encode("ascii")
    if payload is not None:
        body += bytes([STX]) + payload
    body += bytes([ETX])
    return bytes([SOH]) + body + bytes([bcc(body)])


def build_block(payload: bytes, *, final: bool = True) -> bytes:
    """STX payload ETX|EOT BCC (what meters send; the simulator uses it)."""
    body = payload + bytes([ETX if final else EOT])
    return bytes([STX]) + body + bytes([bcc(body)])


def parse_identification_line(line: bytes) -> Identification:
    """Parse the bytes between "/" and LF."""
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise MeterProtocolError("identification contains non-ASCII bytes") from None
    if len(text) < 4 or not text.isprintable():  # ASCII already: printable = 32..126
        raise MeterProtocolError(f"malformed identification {text[:40]!r}")
    manufacturer, baud_char, rest = text[:3], text[3], text[4:]
    if not manufacturer.isalpha():
        raise MeterProtocolError(f"identification {text[:40]!r}: manufacturer must be 3 letters")
    if baud_char not in BAUD_CHARS:
        if "A" <= baud_char <= "I":
            raise MeterUnsupported(f"identification {text[:40]!r}: protocol mode B is not supported")
        raise MeterProtocolError(f"identification {text[:40]!r}: unknown baud rate character")
    enhanced = ""
    while len(rest) >= 2 and rest[0] == "\\":
        enhanced += rest[1]
        rest = rest[2:]
    return Identification(manufacturer, baud_char, enhanced, rest)


class IdentificationExtractor:
    """Finds the identification line in a buffer that may start with noise or with our own request
    echoed back (half-duplex RS-485 converters do that). Lines starting with "/" that do not parse
    are skipped as noise but remembered, so a timeout can report them as a protocol error."""

    def __init__(self) -> None:
        self.rejected: MeterProtocolError | None = None

    def __call__(self, buf: bytearray) -> tuple[int, Identification] | None:
        pos = 0
        while True:
            start = buf.find(b"/", pos)
            if start < 0:
                if len(buf) - pos > MAX_NOISE:
                    raise self.rejected or MeterProtocolError(
                        f"no identification in {len(buf)} bytes of noise")
                return None
            if start - pos > MAX_NOISE:
                raise MeterProtocolError(f"{start} bytes of noise before the identification")
            end = buf.find(b"\n", start)
            if end < 0:
                if len(buf) - start > MAX_IDENT_LINE:
                    raise MeterProtocolError("identification line too long")
                return None
            line = bytes(buf[start + 1:end])
            if line.startswith(b"?"):  # our request echoed back
                pos = end + 1
                continue
            try:
                return end + 1, parse_identification_line(line)
            except MeterProtocolError as exc:
                self.rejected = exc
                pos = start + 1
            if pos > MAX_NOISE:
                raise self.rejected or MeterProtocolError("no identification after echo and noise")


_MESSAGE_START = re.compile(b"[\x01\x02\x06\x15]")  # SOH, STX, ACK, NAK
_BLOCK_END = re.compile(b"[\x03\x04]")              # ETX, EOT


def extract_frame(buf: bytearray) -> tuple[int, Frame] | None:
    """Next ACK, NAK or block in `buf`, skipping (bounded) noise before it."""
    found = _MESSAGE_START.search(buf)
    start = found.start() if found else len(buf)
    if start > MAX_NOISE:
        raise MeterProtocolError(f"{start} bytes of noise where a message was expected")
    if start == len(buf):
        return None
    first = buf[start]
    if first == ACK:
        return start + 1, Frame("ack")
    if first == NAK:
        return start + 1, Frame("nak")
    found = _BLOCK_END.search(buf, start + 1)
    end = found.start() if found else len(buf)
    if end >= len(buf) - 1:  # no terminator yet, or the BCC after it has not arrived
        if end - start > MAX_FRAME:
            raise MeterProtocolError(f"message longer than {MAX_FRAME} bytes")
        return None
    body = bytes(buf[start + 1:end + 1])
    ok = bcc(body) == buf[end + 1]
    final = buf[end] == ETX
    content = body[:-1]
    if first == STX:
        return end + 2, Frame("block", "", content, final, ok)
    # SOH: two command characters, then optionally STX and data.
    command = content[:2].decode("ascii", errors="replace")
    if len(content) < 2 or not (command[0].isalpha() and command[1].isalnum()):
        raise MeterProtocolError(f"malformed command message {content[:10]!r}")
    rest = content[2:]
    if rest and rest[0] != STX:
        raise MeterProtocolError(f"command {command}: data does not start with STX")
    return end + 2, Frame("block", command, rest[1:], final, ok)
