"""The simulated meter's own IEC 62056-21 framing, written from the standard (clause 6.3, message
formats; 6.4, the block check character) and not from the client's code, so a framing bug the
client has cannot be mirrored here and pass a test unnoticed.

A meter receives: request lines, the option select, SOH command messages, ACK/NAK. It sends: the
identification, STX data blocks (ETX final, EOT partial) and SOH command messages (P0, B0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import xor

SOH, STX, ETX, EOT, ACK, NAK = 1, 2, 3, 4, 6, 0x15
CRLF = b"\r\n"
# Baud rate identification of mode C (6.4.14): the character the meter proposes, the speed it means.
BAUD_CHARS = {str(i): 300 << i for i in range(7)}
MODE_READOUT, MODE_PROGRAMMING = "0", "1"


def block_check(body: bytes) -> int:
    """Exclusive-or over everything after the opening SOH/STX, the closing ETX/EOT included."""
    return reduce(xor, body, 0)  # operator.xor: no Python frame per byte (2,000 meters answer at once)


def build_block(payload: bytes, *, final: bool = True) -> bytes:
    tail = payload + (b"\x03" if final else b"\x04")
    return b"\x02" + tail + bytes([block_check(tail)])


def build_command(command: str, payload: bytes | None = None) -> bytes:
    tail = command.encode("ascii") + (b"\x02" + payload if payload is not None else b"") + b"\x03"
    return b"\x01" + tail + bytes([block_check(tail)])


@dataclass(frozen=True)
class Frame:
    kind: str                 # "ack", "nak", "block"
    command: str = ""
    payload: bytes = b""
    final: bool = True
    bcc_ok: bool = True


class Garbled(Exception):
    """Bytes that are no message: the meter drops them."""


def extract_frame(buf: bytearray) -> tuple[int, Frame] | None:
    """The next message the client sent, or None while it is incomplete."""
    for start, byte in enumerate(buf):
        if byte == ACK:
            return start + 1, Frame("ack")
        if byte == NAK:
            return start + 1, Frame("nak")
        if byte in (SOH, STX):
            break
    else:
        return None
    end = next((i for i in range(start + 1, len(buf)) if buf[i] in (ETX, EOT)), None)
    if end is None or end + 1 >= len(buf):
        if len(buf) - start > 4096:
            raise Garbled("message without an end")
        return None
    tail = bytes(buf[start + 1:end + 1])
    ok = block_check(tail) == buf[end + 1]
    content, final = tail[:-1], tail[-1] == ETX
    if buf[start] == STX:
        return end + 2, Frame("block", "", content, final, ok)
    if len(content) < 2:
        raise Garbled("command message too short")
    command, rest = content[:2].decode("ascii", errors="replace"), content[2:]
    if rest and rest[0] != STX:
        raise Garbled("command data without STX")
    return end + 2, Frame("block", command, rest[1:], final, ok)


def parse_request(payload: bytes) -> tuple[str, str]:
    """`address(parameter)` of an R1/R3/R5/W1 command."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise Garbled("non-ASCII request") from None
    address, opening, rest = text.partition("(")
    if not opening or not rest.endswith(")") or ")" in rest[:-1] or "(" in rest:
        raise Garbled(f"request {text[:30]!r} is not address(value)")
    return address.strip(), rest[:-1]
