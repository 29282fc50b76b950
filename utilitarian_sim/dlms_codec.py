"""The simulated DLMS server's own codec, written from IEC 62056-46/-47/-5-3/-6-2 and the Green Book
without the client's code: HDLC frames (bitwise CRC), the wrapper header, A-XDR data as (tag, value)
pairs, the AARQ fields a server reads, and AES-GCM with the standard's IV and additional data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


class Malformed(Exception):
    """A request the simulated meter cannot parse (it answers as a real meter would, or not at all)."""


# -- CRC-16/X.25, bit by bit (the client uses a table: two implementations) --------------------

def fcs(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return (crc ^ 0xFFFF).to_bytes(2, "little")


@dataclass
class HdlcFrame:
    dest: bytes
    src: bytes
    control: int
    info: bytes = b""
    segmented: bool = False


def hdlc_encode(frame: HdlcFrame) -> bytes:
    size = 2 + len(frame.dest) + len(frame.src) + 1 + 2 + (2 + len(frame.info) if frame.info else 0)
    head = bytes([0xA0 | (8 if frame.segmented else 0) | (size >> 8) & 7, size & 0xFF]) \
        + frame.dest + frame.src + bytes([frame.control])
    if frame.info:
        head = head + fcs(head) + frame.info
    return b"\x7e" + head + fcs(head) + b"\x7e"


def hdlc_take(buffer: bytearray) -> HdlcFrame | None:
    """Remove and return the first whole frame; None if incomplete. Raises Malformed (and drops
    the bad bytes) on a bad check sequence."""
    while buffer and buffer[0] != 0x7E:
        del buffer[0]
    while len(buffer) > 1 and buffer[1] == 0x7E:
        del buffer[0]
    if len(buffer) < 3:
        return None
    size = ((buffer[1] & 7) << 8) | buffer[2]
    if len(buffer) < size + 2:
        return None
    body = bytes(buffer[1:size + 1])
    del buffer[:size + 1]           # keep the closing flag: it may open the next frame
    if body[-2:] != fcs(body[:-2]):
        raise Malformed("FCS")
    pos = 2
    addresses = []
    for _ in range(2):
        start = pos
        while pos < len(body) and not body[pos] & 1:
            pos += 1
        pos += 1
        addresses.append(body[start:pos])
    control = body[pos]
    info = b""
    if len(body) > pos + 3:
        if body[pos + 1:pos + 3] != fcs(body[:pos + 1]):
            raise Malformed("HCS")
        info = body[pos + 3:-2]
    return HdlcFrame(addresses[0], addresses[1], control, info, bool(body[0] & 8))


def hdlc_address(value: int, *, last: bool) -> bytes:
    return bytes([(value << 1) | (1 if last else 0)])


def wrapper(src: int, dst: int, apdu: bytes) -> bytes:
    return struct.pack(">HHHH", 1, src, dst, len(apdu)) + apdu


# -- A-XDR ------------------------------------------------------------------------------------

_SIZES = {3: 1, 5: 4, 6: 4, 15: 1, 16: 2, 17: 1, 18: 2, 20: 8, 21: 8, 22: 1, 23: 4, 24: 8, 25: 12, 26: 5, 27: 4}
_SIGNED = {5, 15, 16, 20}


def axdr_length(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if pos + 1 + n > len(data):
        raise Malformed("length")
    return int.from_bytes(data[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def length_bytes(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes(2 if n < 0x10000 else 4, "big")
    return bytes([0x80 | len(raw)]) + raw


def axdr_decode(data: bytes, pos: int = 0) -> tuple[tuple, int]:
    """((tag, value), next position); arrays and structures hold lists of (tag, value)."""
    if pos >= len(data):
        raise Malformed("data ends early")
    tag = data[pos]
    pos += 1
    if tag == 0:
        return (0, None), pos
    if tag in (1, 2):
        count, pos = axdr_length(data, pos)
        items = []
        for _ in range(count):
            item, pos = axdr_decode(data, pos)
            items.append(item)
        return (tag, items), pos
    if tag in (9, 10, 12):
        n, pos = axdr_length(data, pos)
        if pos + n > len(data):
            raise Malformed("string ends early")
        return (tag, data[pos:pos + n]), pos + n
    if tag in _SIZES:
        n = _SIZES[tag]
        if pos + n > len(data):
            raise Malformed("number ends early")
        raw = data[pos:pos + n]
        if tag in (23, 24):
            value = struct.unpack(">f" if n == 4 else ">d", raw)[0]
        elif tag in (25, 26, 27):
            value = raw
        else:
            value = int.from_bytes(raw, "big", signed=tag in _SIGNED)
        return (tag, value), pos + n
    raise Malformed(f"tag {tag}")


def axdr_encode(tag: int, value) -> bytes:
    if tag == 0:
        return b"\x00"
    if tag in (1, 2):
        return bytes([tag]) + length_bytes(len(value)) + b"".join(axdr_encode(t, v) for t, v in value)
    if tag in (9, 10, 12):
        raw = value if isinstance(value, bytes) else value.encode()
        return bytes([tag]) + length_bytes(len(raw)) + raw
    if tag in (23, 24):
        return bytes([tag]) + struct.pack(">f" if tag == 23 else ">d", value)
    if tag in (25, 26, 27):
        return bytes([tag]) + value
    return bytes([tag]) + int(value).to_bytes(_SIZES[tag], "big", signed=tag in _SIGNED)


# -- AARQ as a server reads it (BER) -----------------------------------------------------------

@dataclass
class Aarq:
    context: int = 1
    calling_title: bytes | None = None
    mechanism: int = 0
    auth_value: bytes | None = None
    user_information: bytes = b""
    extra: dict = field(default_factory=dict)


def _ber_items(data: bytes):
    pos = 0
    while pos < len(data):
        tag = data[pos]
        n, pos = axdr_length(data, pos + 1)    # BER short/long form is the same shape here
        yield tag, data[pos:pos + n]
        pos += n


def parse_aarq(apdu: bytes) -> Aarq:
    if not apdu or apdu[0] != 0x60:
        raise Malformed("not an AARQ")
    n, pos = axdr_length(apdu, 1)
    body = apdu[pos:pos + n]
    aarq = Aarq()
    for tag, value in _ber_items(body):
        if tag == 0xA1:
            aarq.context = value[-1]
        elif tag == 0xA6:
            aarq.calling_title = value[2:]
        elif tag == 0x8B:
            aarq.mechanism = value[-1]
        elif tag == 0xAC:
            aarq.auth_value = value[2:]
        elif tag == 0xBE:
            aarq.user_information = value[2:]   # inside OCTET STRING 04 len
        else:
            aarq.extra[tag] = value
    return aarq


def ber(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + length_bytes(len(body)) + body


OID = bytes([0x60, 0x85, 0x74, 0x05, 0x08])


def build_aare(*, result: int, diagnostic: int, context: int, system_title: bytes | None,
               mechanism: int, challenge: bytes | None, user: bytes) -> bytes:
    body = ber(0xA1, ber(0x06, OID + bytes([1, context])))
    body += ber(0xA2, bytes([0x02, 0x01, result]))
    body += ber(0xA3, ber(0xA1, bytes([0x02, 0x01, diagnostic])))
    if system_title:
        body += ber(0xA4, ber(0x04, system_title))
    if mechanism:
        body += bytes([0x88, 0x02, 0x07, 0x80]) + ber(0x89, OID + bytes([2, mechanism]))
    if challenge:
        body += ber(0xAA, ber(0x80, challenge))
    body += ber(0xBE, ber(0x04, user))
    return ber(0x61, body)


# -- AES-GCM as the Green Book describes it ----------------------------------------------------

def gcm(key: bytes, title: bytes, counter: int, aad: bytes, plain: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    out = AESGCM(key).encrypt(title + struct.pack(">I", counter), plain, aad)
    return out[:-16], out[-16:-4]           # ciphertext, tag truncated to 12 octets


def gcm_open(key: bytes, title: bytes, counter: int, aad: bytes, cipher: bytes, tag: bytes) -> bytes | None:
    """Plaintext, or None when the 12-octet tag does not verify (AESGCM's one-shot API wants the
    full 16-octet tag; the Cipher API accepts a truncated one)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.exceptions import InvalidTag
    decryptor = Cipher(algorithms.AES(key), modes.GCM(title + struct.pack(">I", counter), tag,
                                                      min_tag_length=12)).decryptor()
    decryptor.authenticate_additional_data(aad)
    try:
        return decryptor.update(cipher) + decryptor.finalize()
    except InvalidTag:
        return None
