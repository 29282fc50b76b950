"""A simulated DLMS/COSEM electricity meter: its objects (clock, registers with scaler and unit, a
load profile, the frame counter), its security (none, LLS, HLS-GMAC with authenticated encryption)
and the xDLMS server side of one association. Written from the Blue/Green Books, not the client.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable
from zoneinfo import ZoneInfo

from utilitarian_sim import dlms_codec as c
from utilitarian_sim.faults import Faults
from utilitarian_sim.values import simulated_value

EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()   # values grow from here
# OBIS -> (class id, unit code, scaler, series unit for simulated_value, A-XDR tag)
REGISTERS = {
    bytes([1, 0, 1, 8, 0, 255]): (3, 30, 0, "Wh", 6),       # active energy import, Wh
    bytes([1, 0, 2, 8, 0, 255]): (3, 30, 0, "Wh", 6),       # active energy export
    bytes([1, 0, 32, 7, 0, 255]): (3, 35, -1, "V", 18),     # voltage L1, 0.1 V
    bytes([1, 0, 31, 7, 0, 255]): (3, 33, -2, "A", 18),     # current L1, 0.01 A
    bytes([1, 0, 1, 7, 0, 255]): (3, 27, 0, "W", 5),        # active power import
}
CLOCK = bytes([0, 0, 1, 0, 0, 255])
PROFILE = bytes([1, 0, 99, 1, 0, 255])
STATUS = bytes([0, 0, 96, 10, 1, 255])
SERIAL_NO = bytes([0, 0, 96, 1, 0, 255])
FRAME_COUNTER = bytes([0, 0, 43, 1, 0, 255])
ASSOCIATION = bytes([0, 0, 40, 0, 0, 255])
PROFILE_COLUMNS = [(8, CLOCK, 2), (1, STATUS, 2), (3, bytes([1, 0, 1, 8, 0, 255]), 2),
                   (3, bytes([1, 0, 2, 8, 0, 255]), 2)]
PROFILE_PERIOD = 900
PROFILE_DAYS = 3


@dataclass(frozen=True)
class SimDlmsMeter:
    """security: "none", "lls" or "hls-gmac" for the management client (SAP 1); the public client
    (SAP 16) always associates without security and may read only the frame counter and serial.
    authentication_key/encryption_key (16 bytes) and password are the meter's own: give the
    client other ones to see a wrong key refused. block_size: longest Get answer before block
    transfer. clock_offset: seconds the clock is ahead at start."""

    name: str = ""
    server: int = 1
    physical: int = 17
    security: str = "none"
    password: str = ""
    authentication_key: bytes = bytes(range(16))
    encryption_key: bytes = bytes(range(16, 32))
    system_title: bytes = b"SIM\x00\x00\x00\x00\x01"
    timezone: str = "UTC"
    clock_offset: float = 0.0
    block_size: int = 480
    faults: Faults = Faults()
    serial_number: str = "SIM00000001"

    def __post_init__(self) -> None:
        if self.security not in ("none", "lls", "hls-gmac"):
            raise ValueError("security must be none, lls or hls-gmac")


class DlmsMeterState:
    """What outlives one connection: clock offset, last invocation counter per client, writes."""

    def __init__(self, meter: SimDlmsMeter, number: int, clock: Callable[[], float]):
        self.meter = meter
        self.number = number
        self.clock = clock
        self.offset = meter.clock_offset
        self.zone = ZoneInfo(meter.timezone)
        self.client_counter: dict[int, int] = {}
        self.server_counter = 1000
        self.lock = threading.Lock()
        self.clock_sets: list[datetime] = []
        self.requests = 0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock() + self.offset, timezone.utc)

    def register(self, obis: bytes, at: float | None = None) -> int:
        _cls, _unit, scaler, unit, _tag = REGISTERS[obis]
        elapsed = (self.clock() if at is None else at) - EPOCH
        value = simulated_value(self.number, obis.hex(), "kWh" if unit == "Wh" else unit, elapsed,
                                quantum=Decimal("0.001"))
        if unit == "Wh":
            value *= 1000                               # kWh counter shown in Wh
        return int(value.scaleb(-scaler))

    def next_server_counter(self) -> int:
        with self.lock:
            self.server_counter += 1
            return self.server_counter


def encode_clock(moment: datetime, zone) -> bytes:
    local = moment.astimezone(zone)
    deviation = -int(local.utcoffset().total_seconds() // 60)
    return struct.pack(">HBBBBBBBhB", local.year, local.month, local.day, local.isoweekday(),
                       local.hour, local.minute, local.second, local.microsecond // 10000, deviation,
                       0x80 if local.dst() else 0)


def decode_clock(raw: bytes, zone) -> datetime | None:
    if len(raw) != 12:
        return None
    y, mo, d, _w, h, mi, s, _hs, dev, _st = struct.unpack(">HBBBBBBBhB", raw)
    try:
        naive = datetime(y, mo, d, h, mi, s if s != 0xFF else 0)
    except ValueError:
        return None
    if dev == -0x8000:
        return naive.replace(tzinfo=zone)
    return naive.replace(tzinfo=timezone(timedelta(minutes=-dev)))


# Data-access-results and action results used below
OBJECT_UNDEFINED, READ_WRITE_DENIED, TYPE_UNMATCHED, OTHER = 4, 3, 12, 250


@dataclass
class Association:
    """One client's association on one connection."""

    client: int
    state: DlmsMeterState
    established: bool = False
    hls_pending: bool = False
    ciphered: bool = False
    client_title: bytes = b""
    client_challenge: bytes = b""
    server_challenge: bytes = b""
    blocks: list[bytes] = field(default_factory=list)
    block_no: int = 0

    @property
    def meter(self) -> SimDlmsMeter:
        return self.state.meter

    # -- ACSE ------------------------------------------------------------------------------------
    def associate(self, apdu: bytes) -> bytes:
        m = self.meter
        try:
            aarq = c.parse_aarq(apdu)
        except (c.Malformed, IndexError):
            return c.build_aare(result=1, diagnostic=1, context=1, system_title=None, mechanism=0,
                                challenge=None, user=bytes([0x0E, 0x06, 0x00]))

        def refuse(diagnostic: int) -> bytes:
            return c.build_aare(result=1, diagnostic=diagnostic, context=aarq.context, system_title=None,
                                mechanism=0, challenge=None, user=bytes([0x0E, 0x06, 0x00]))

        wanted = "none" if self.client == 16 else m.security
        mechanism = {"none": 0, "lls": 1, "hls-gmac": 5}[wanted]
        if aarq.mechanism != mechanism:
            return refuse(11 if aarq.mechanism not in (0, 1, 5) else 13)
        if wanted == "lls" and aarq.auth_value != m.password.encode():
            return refuse(13)
        user = aarq.user_information
        if wanted == "hls-gmac":
            if aarq.context != 3 or not aarq.calling_title or len(aarq.calling_title) != 8 \
                    or not aarq.auth_value or not user or user[0] != 0x21:
                return refuse(13)
            plain = self.open_ciphered(user, aarq.calling_title, check_counter=True)
            if plain is None:
                return refuse(13)
            user = plain
            self.client_title, self.client_challenge = aarq.calling_title, aarq.auth_value
        if not user or user[0] != 0x01:
            return refuse(1)
        initiate = bytes([0x08, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00, 0x00, 0x18, 0x1D, 0x04, 0x00, 0x00, 0x07])
        if wanted == "hls-gmac":
            self.ciphered = True
            self.hls_pending = True
            self.server_challenge = os.urandom(16)
            initiate = self.seal(0x28, initiate)
            return c.build_aare(result=0, diagnostic=14, context=3, system_title=m.system_title,
                                mechanism=5, challenge=self.server_challenge, user=initiate)
        self.established = True
        return c.build_aare(result=0, diagnostic=0, context=aarq.context, system_title=None,
                            mechanism=mechanism, challenge=None, user=initiate)

    # -- ciphering -------------------------------------------------------------------------------
    def open_ciphered(self, apdu: bytes, title: bytes, *, check_counter: bool) -> bytes | None:
        n, pos = c.axdr_length(apdu, 1)
        body = apdu[pos:pos + n]
        if len(body) < 5 + 12 or body[0] != 0x30:
            return None
        counter = int.from_bytes(body[1:5], "big")
        with self.state.lock:
            last = self.state.client_counter.get(self.client, 0)
            if check_counter and counter <= last:
                return None                                   # replay: refused like a bad tag
        plain = c.gcm_open(self.meter.encryption_key, title, counter,
                           bytes([0x30]) + self.meter.authentication_key, body[5:-12], body[-12:])
        if plain is not None:
            with self.state.lock:
                self.state.client_counter[self.client] = max(counter, last)
        return plain

    def seal(self, tag: int, plain: bytes) -> bytes:
        counter = self.state.next_server_counter()
        text, mac = c.gcm(self.meter.encryption_key, self.meter.system_title, counter,
                          bytes([0x30]) + self.meter.authentication_key, plain)
        body = bytes([0x30]) + struct.pack(">I", counter) + text + mac
        return bytes([tag]) + c.length_bytes(len(body)) + body

    def gmac(self, title: bytes, counter: int, challenge: bytes) -> bytes:
        _text, mac = c.gcm(self.meter.encryption_key, title, counter,
                           bytes([0x10]) + self.meter.authentication_key + challenge, b"")
        return bytes([0x10]) + struct.pack(">I", counter) + mac

    # -- xDLMS -----------------------------------------------------------------------------------
    def serve(self, apdu: bytes) -> bytes | None:
        """The answer to one xDLMS APDU (None: stay silent)."""
        if self.ciphered:
            if apdu[:1] not in (b"\xC8", b"\xC9", b"\xCB"):
                return bytes([0xD8, 0x01, 0x02])              # exception: service not allowed
            plain = self.open_ciphered(apdu, self.client_title, check_counter=True)
            if plain is None:
                return bytes([0xD8, 0x01, 0x06])              # exception: deciphering error
            answer = self.dispatch(plain)
            return self.seal({0xC4: 0xCC, 0xC5: 0xCD, 0xC7: 0xCF}[answer[0]], answer)
        return self.dispatch(apdu)

    def dispatch(self, apdu: bytes) -> bytes:
        kind = apdu[:2]
        if kind == b"\xC0\x01":
            return self.get(apdu)
        if kind == b"\xC0\x02":
            return self.next_block(apdu)
        if kind == b"\xC1\x01":
            return self.set(apdu)
        if kind == b"\xC3\x01":
            return self.action(apdu)
        return bytes([0xD8, 0x01, 0x02])

    def _allowed(self, obis: bytes) -> bool:
        if self.hls_pending:
            return obis == ASSOCIATION
        return self.client != 16 or obis in (FRAME_COUNTER, SERIAL_NO) or self.meter.security == "none"

    def get(self, apdu: bytes) -> bytes:
        invoke = apdu[2]
        class_id, obis, attribute = int.from_bytes(apdu[3:5], "big"), apdu[5:11], apdu[11]
        selection = apdu[13:] if len(apdu) > 12 and apdu[12] == 1 else b""
        if not self._allowed(obis):
            return bytes([0xC4, 0x01, invoke, 0x01, READ_WRITE_DENIED])
        value = self.attribute(class_id, obis, attribute, selection)
        if isinstance(value, int):
            return bytes([0xC4, 0x01, invoke, 0x01, value])
        if len(value) <= self.meter.block_size:
            return bytes([0xC4, 0x01, invoke, 0x00]) + value
        self.blocks = [value[i:i + self.meter.block_size] for i in range(0, len(value), self.meter.block_size)]
        self.block_no = 0
        return self._block(invoke)

    def _block(self, invoke: int) -> bytes:
        chunk = self.blocks.pop(0)
        self.block_no += 1
        last = 1 if not self.blocks else 0
        return (bytes([0xC4, 0x02, invoke, last]) + struct.pack(">I", self.block_no) + b"\x00"
                + c.length_bytes(len(chunk)) + chunk)

    def next_block(self, apdu: bytes) -> bytes:
        if not self.blocks or int.from_bytes(apdu[3:7], "big") != self.block_no:
            return bytes([0xC4, 0x02, apdu[2], 0x01]) + struct.pack(">I", self.block_no) + b"\x01\x10"
        return self._block(apdu[2])

    def attribute(self, class_id: int, obis: bytes, attribute: int, selection: bytes) -> bytes | int:
        s = self.state
        if obis in REGISTERS:
            cls, unit, scaler, _u, tag = REGISTERS[obis]
            if class_id != cls:
                return 9                                       # object class inconsistent
            if attribute == 2:
                return c.axdr_encode(tag, s.register(obis))
            if attribute == 3:
                return c.axdr_encode(2, [(15, scaler), (22, unit)])
            return OBJECT_UNDEFINED
        if obis == CLOCK and class_id == 8 and attribute == 2:
            return c.axdr_encode(9, encode_clock(s.now(), s.zone))
        if obis == SERIAL_NO and class_id == 1 and attribute == 2:
            return c.axdr_encode(10, self.meter.serial_number)
        if obis == FRAME_COUNTER and class_id == 1 and attribute == 2:
            with s.lock:
                return c.axdr_encode(6, s.client_counter.get(1, 0))
        if obis == PROFILE and class_id == 7:
            if attribute == 3:
                return c.axdr_encode(1, [(2, [(18, cls), (9, ln), (15, att), (18, 0)])
                                         for cls, ln, att in PROFILE_COLUMNS])
            if attribute == 4:
                return c.axdr_encode(6, PROFILE_PERIOD)
            if attribute == 2:
                return self.profile_buffer(selection)
        return OBJECT_UNDEFINED

    def profile_buffer(self, selection: bytes) -> bytes | int:
        now = self.state.clock()
        first = (now // PROFILE_PERIOD) * PROFILE_PERIOD - PROFILE_DAYS * 86400
        start, end = first, now
        if selection:
            try:
                (_tag, items), _ = c.axdr_decode(selection, 1)
            except (c.Malformed, IndexError):
                return TYPE_UNMATCHED
            if selection[0] != 1 or len(items) != 4:
                return OTHER
            low = decode_clock(items[1][1], self.state.zone)
            high = decode_clock(items[2][1], self.state.zone)
            if low is None or high is None:
                return TYPE_UNMATCHED
            start, end = max(first, low.timestamp()), min(now, high.timestamp())
        rows = []
        at = -(-start // PROFILE_PERIOD) * PROFILE_PERIOD
        while at <= end:
            moment = datetime.fromtimestamp(at, timezone.utc)
            rows.append((2, [(9, encode_clock(moment, self.state.zone)), (17, 0),
                             (6, self.state.register(PROFILE_COLUMNS[2][1], at)),
                             (6, self.state.register(PROFILE_COLUMNS[3][1], at))]))
            at += PROFILE_PERIOD
        return c.axdr_encode(1, rows)

    def set(self, apdu: bytes) -> bytes:
        invoke = apdu[2]
        class_id, obis, attribute = int.from_bytes(apdu[3:5], "big"), apdu[5:11], apdu[11]
        if not self._allowed(obis) or (self.client == 16 and self.meter.security != "none"):
            return bytes([0xC5, 0x01, invoke, READ_WRITE_DENIED])
        if (class_id, obis, attribute) != (8, CLOCK, 2):
            return bytes([0xC5, 0x01, invoke, READ_WRITE_DENIED])
        try:
            (tag, raw), _ = c.axdr_decode(apdu, 13)
        except (c.Malformed, IndexError):
            return bytes([0xC5, 0x01, invoke, TYPE_UNMATCHED])
        moment = decode_clock(raw, self.state.zone) if tag == 9 else None
        if moment is None:
            return bytes([0xC5, 0x01, invoke, TYPE_UNMATCHED])
        with self.state.lock:
            self.state.offset = moment.timestamp() - self.state.clock()
            self.state.clock_sets.append(moment)
        return bytes([0xC5, 0x01, invoke, 0x00])

    def action(self, apdu: bytes) -> bytes:
        invoke = apdu[2]
        class_id, obis, method = int.from_bytes(apdu[3:5], "big"), apdu[5:11], apdu[11]
        if (class_id, obis, method) != (15, ASSOCIATION, 1) or not self.hls_pending:
            return bytes([0xC7, 0x01, invoke, READ_WRITE_DENIED, 0x00])
        try:
            (tag, reply), _ = c.axdr_decode(apdu, 13)
        except (c.Malformed, IndexError):
            return bytes([0xC7, 0x01, invoke, TYPE_UNMATCHED, 0x00])
        if tag != 9 or len(reply) != 17 or \
                reply != self.gmac(self.client_title, int.from_bytes(reply[1:5], "big"), self.server_challenge):
            self.hls_pending = False
            return bytes([0xC7, 0x01, invoke, READ_WRITE_DENIED, 0x00])
        self.hls_pending = False
        self.established = True
        answer = self.gmac(self.meter.system_title, self.state.next_server_counter(), self.client_challenge)
        return bytes([0xC7, 0x01, invoke, 0x00, 0x01, 0x00]) + c.axdr_encode(9, answer)

