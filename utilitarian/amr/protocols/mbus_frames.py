"""Wired M-Bus link layer (EN 13757-2, FT 1.2 frames): single character E5, short frames
(10 C A CS 16), control and long frames (68 L L 68 C A CI data CS 16), and the pure extractor that
finds one answer in a receive buffer. A collision on the bus shows as a frame that does not check.
"""

from __future__ import annotations

from dataclasses import dataclass

from utilitarian.amr.errors import MeterChecksumError, MeterProtocolError

ACK = 0xE5
SND_NKE = 0x40
SND_UD = 0x53          # with FCB clear; 0x73 with FCB set
REQ_UD2 = 0x5B         # with FCB clear; 0x7B with FCB set
FCB = 0x20
RSP_UD = 0x08          # slave answer (0x08 plus ACD 0x20 and DFC 0x10 bits)
CI_SELECT = 0x52       # selection of a slave by its secondary address
ADDRESS_SELECTED = 253  # the "network layer" address of the selected slave
ADDRESS_BROADCAST = 255
GARBAGE_LIMIT = 512


class MbusFrameError(MeterProtocolError):
    """Bytes that are not an M-Bus frame (truncated, bad length, wrong stop byte)."""


@dataclass(frozen=True)
class Frame:
    kind: str          # "ack", "short", "long"
    control: int = 0
    address: int = 0
    ci: int | None = None
    data: bytes = b""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def short_frame(control: int, address: int) -> bytes:
    return bytes([0x10, control, address, checksum(bytes([control, address])), 0x16])


def long_frame(control: int, address: int, ci: int, data: bytes = b"") -> bytes:
    body = bytes([control, address, ci]) + data
    if len(body) > 255:
        raise ValueError("M-Bus frame body longer than 255 bytes")
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([checksum(body), 0x16])


def snd_nke(address: int) -> bytes:
    return short_frame(SND_NKE, address)


def req_ud2(address: int, fcb: bool) -> bytes:
    return short_frame(REQ_UD2 | (FCB if fcb else 0), address)


def select_secondary(pattern: str) -> bytes:
    """SND_UD with CI 0x52 to address 253: identification (8 BCD digits, F = wildcard nibble) and,
    when given, manufacturer (4 hex), version and medium (2 hex each); absent ones are wildcards."""
    ident = pattern[:8]
    rest = pattern[8:] or "FFFFFFFF"
    ident_bytes = bytes(int(ident[i:i + 2], 16) for i in range(0, 8, 2))[::-1]   # BCD, LSB first
    manufacturer = bytes.fromhex(rest[0:4])[::-1]
    return long_frame(SND_UD, ADDRESS_SELECTED, CI_SELECT,
                      ident_bytes + manufacturer + bytes.fromhex(rest[4:8]))


def extract_frame(buffer: bytearray) -> tuple[int, Frame] | None:
    """(consumed, frame) of the first answer in `buffer`, None to wait for more. Anything that is
    not a frame start is an error, not skipped: on a bus, stray bytes mean a collision or noise,
    and the answer cannot be trusted."""
    if not buffer:
        return None
    start = buffer[0]
    if start == ACK:
        return 1, Frame("ack")
    if start == 0x10:
        if len(buffer) < 5:
            return None
        control, address, cs, stop = buffer[1], buffer[2], buffer[3], buffer[4]
        if stop != 0x16:
            raise MbusFrameError("short frame without its stop byte 0x16")
        if checksum(bytes([control, address])) != cs:
            raise MeterChecksumError("M-Bus short frame checksum does not match")
        return 5, Frame("short", control, address)
    if start == 0x68:
        if len(buffer) < 4:
            return None
        length, repeat, second = buffer[1], buffer[2], buffer[3]
        if length != repeat or second != 0x68:
            raise MbusFrameError("long frame header is garbled (L fields differ or no second 0x68)")
        if length < 3:
            raise MbusFrameError(f"long frame of length {length} has no C, A and CI fields")
        end = 4 + length + 2
        if len(buffer) < end:
            return None
        body = bytes(buffer[4:4 + length])
        if buffer[end - 1] != 0x16:
            raise MbusFrameError("long frame without its stop byte 0x16")
        if checksum(body) != buffer[end - 2]:
            raise MeterChecksumError("M-Bus long frame checksum does not match")
        return end, Frame("long", body[0], body[1], body[2], body[3:])
    raise MbusFrameError(f"answer starts with 0x{start:02x}, not an M-Bus frame (noise or a collision)")
