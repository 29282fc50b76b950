"""DLMS/COSEM client sessions (LN referencing): association without security, with LLS, or with
HLS-GMAC and authenticated encryption of every xDLMS APDU (security suite 0); Get (with block
transfer and selective access), Set and Action; release.

One `DlmsSession` is one association with one logical device, bounded by the target's read timeout
and session timeout. Keys and passwords go into the cipher and onto the wire only.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from utilitarian.amr.errors import (MeterAuthenticationError, MeterError, MeterProtocolError,
                                    MeterUnsupported)
from utilitarian.amr.protocols import dlms_apdu as a
from utilitarian.amr.protocols import dlms_security as sec
from utilitarian.amr.protocols.dlms_axdr import DlmsDecodeError, decode_data, encode_data, Typed, OCTET_STRING
from utilitarian.amr.protocols.dlms_link import HdlcLink, WrapperLink
from utilitarian.amr.protocols.transport import Channel, Transport, open_transport
from utilitarian.amr.target import MeterTarget

log = logging.getLogger(__name__)

ASSOCIATION_LN = 15
CURRENT_ASSOCIATION = bytes([0, 0, 40, 0, 0, 255])
REPLY_TO_HLS = 1                   # method 1 of IC 15: reply_to_HLS_authentication
PUBLIC_CLIENT = 16
MAX_BLOCKS = 10_000                # a long get of more blocks is a meter looping on us
MAX_PDU = 0xFFFF
SECURITY = ("none", "lls", "hls-gmac")


@dataclass(frozen=True)
class DlmsSettings:
    """The DLMS parameters of a target's URL (see docs/meters.md)."""

    client: int = PUBLIC_CLIENT     # client SAP (16 public, 1 management, ...)
    server: int = 1                 # server logical device (1 management logical device)
    physical: int | None = None     # HDLC lower (physical) address; None on the TCP wrapper
    security: str = "none"          # none | lls | hls-gmac
    keys: str | None = None         # key file: absolute path or systemd credential name
    key_id: str | None = None       # table in the key file
    invocation_counter: str | None = None  # OBIS of the frame counter, read via the public client

    @classmethod
    def of(cls, target: MeterTarget) -> DlmsSettings:
        opts = dict(target.options)
        physical = opts.get("physical")
        if physical is None and target.transport == "serial":
            physical = 17            # a common default of single meters on a serial line
        return cls(int(opts.get("client", PUBLIC_CLIENT)), int(opts.get("server", 1)),
                   int(physical) if physical is not None else None, str(opts.get("security", "none")),
                   opts.get("keys"), opts.get("key_id"), opts.get("invocation_counter"))


def _dlms_keys(target: MeterTarget, settings: DlmsSettings) -> sec.DlmsKeys:
    keys = sec.load_keys(settings.keys, settings.key_id) if settings.keys else sec.DlmsKeys()
    if settings.security == "lls" and keys.password is None:
        if target.password is None:
            raise MeterUnsupported(f"{target}: security=lls needs a password (the meter's secret or "
                                   "`password` in its key file)")
        keys = sec.DlmsKeys(keys.authentication_key, keys.encryption_key,
                            target.password.encode("utf-8"), keys.system_title)
    if settings.security == "hls-gmac" and not (keys.authentication_key and keys.encryption_key):
        raise MeterUnsupported(f"{target}: security=hls-gmac needs authentication_key and "
                               "encryption_key in the key file (keys=...)")
    return keys


class DlmsSession:
    """An association. Use as a context manager: the association is released on exit."""

    def __init__(self, target: MeterTarget, *, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic, settings: DlmsSettings | None = None,
                 invocation_counter: int | None = None, challenge: bytes | None = None):
        if target.protocol != "dlms":
            raise MeterUnsupported(f"{target}: not a DLMS target")
        self.target = target
        self.settings = settings or DlmsSettings.of(target)
        if self.settings.security not in SECURITY:
            raise MeterUnsupported(f"{target}: unknown security {self.settings.security!r}")
        self.keys = _dlms_keys(target, self.settings)
        self.transport = transport or open_transport(target)
        self.clock = clock
        self.channel = Channel(self.transport, timeout=target.timeout,
                               deadline=clock() + target.session_timeout, clock=clock)
        self.ciphered = self.settings.security == "hls-gmac"
        self.invocation_counter = invocation_counter if invocation_counter is not None else 1
        self.challenge = challenge or os.urandom(16)
        self.meter_title: bytes | None = None
        self.meter_counter = -1
        self.max_pdu = MAX_PDU
        self.link = None
        self.associated = False

    @property
    def where(self) -> str:
        return f"{self.target.interface} (logical device {self.settings.server})"

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> DlmsSession:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _new_link(self, client: int):
        s = self.settings
        if self.target.transport == "serial" or s.physical is not None:
            return HdlcLink(self.channel, client, s.server, s.physical)
        return WrapperLink(self.channel, client, s.server)

    def open(self) -> None:
        self.transport.open(min(self.target.timeout, max(self.channel.remaining(), 0.001)))
        if self.ciphered and self.settings.invocation_counter:
            self.invocation_counter = self._read_frame_counter() + 1
        self.link = self._new_link(self.settings.client)
        self.link.connect()
        self.associate()

    def close(self) -> None:
        if self.link is not None:
            if self.associated:
                self.associated = False
                try:
                    self.link.request(a.build_rlrq())
                except MeterError as exc:
                    log.debug("release of %s not confirmed (%s)", self.where, exc)
            self.link.disconnect()
            self.link = None
        self.transport.close()

    def _read_frame_counter(self) -> int:
        """The meter's count of our last invocation (an IC 1 object, read by the public client
        without security): a secured client must start above it or the meter drops its APDUs."""
        from utilitarian.amr.protocols.dlms_axdr import parse_obis

        link = self._new_link(PUBLIC_CLIENT)
        link.connect()
        try:
            aare = a.parse_aare(link.request(a.build_aarq(
                mechanism=a.MECHANISM_NONE, ciphered=False, system_title=self.keys.system_title,
                auth_value=None, user_information=a.initiate_request(MAX_PDU))))
            if aare.result != 0:
                raise MeterAuthenticationError(f"{self.where}: the public client may not associate "
                                               "to read the invocation counter")
            obis = parse_obis(self.settings.invocation_counter)
            result = a.parse_get_response(link.request(a.get_request(1, obis, 2)), "invocation counter")
            value = decode_data(result.data)
            link.request(a.build_rlrq())
        finally:
            link.disconnect()
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MeterProtocolError(f"{self.where}: invocation counter is not a number")
        return value

    # -- association -------------------------------------------------------------------------
    def associate(self) -> None:
        mechanism = {"none": a.MECHANISM_NONE, "lls": a.MECHANISM_LLS, "hls-gmac": a.MECHANISM_HLS_GMAC}[
            self.settings.security]
        initiate = a.initiate_request(MAX_PDU)
        if self.ciphered:
            initiate = self._cipher(a.GLO_INITIATE_REQUEST, initiate)
        auth_value = {"lls": self.keys.password, "hls-gmac": self.challenge}.get(self.settings.security)
        answer = self.link.request(a.build_aarq(mechanism=mechanism, ciphered=self.ciphered,
                                                system_title=self.keys.system_title,
                                                auth_value=auth_value, user_information=initiate))
        aare = a.parse_aare(answer)
        if aare.result != 0:
            reason = {1: "authentication failure", 13: "authentication failure",
                      11: "authentication mechanism name not recognised",
                      14: "authentication required", 2: "application context name not supported"
                      }.get(aare.diagnostic or -1, f"diagnostic {aare.diagnostic}")
            error = MeterAuthenticationError if aare.diagnostic in (1, 11, 12, 13, 14) or \
                mechanism == a.MECHANISM_LLS else MeterUnsupported
            raise error(f"{self.where}: association rejected ({reason})")
        if self.ciphered:
            if not aare.system_title or len(aare.system_title) != 8:
                raise MeterProtocolError(f"{self.where}: ciphered AARE without the meter's system title")
            self.meter_title = aare.system_title
        if aare.user_information is None:
            raise DlmsDecodeError("AARE without an InitiateResponse")
        user = aare.user_information
        if self.ciphered and user[:1] == bytes([a.GLO_INITIATE_RESPONSE]):
            user = self._decipher(user)
        self.max_pdu = min(MAX_PDU, max(a.parse_initiate_response(user), 64))
        self.associated = True
        if mechanism == a.MECHANISM_HLS_GMAC:
            self._hls_pass_3_and_4(aare.challenge)

    def _hls_pass_3_and_4(self, server_challenge: bytes | None) -> None:
        if not server_challenge:
            raise MeterProtocolError(f"{self.where}: HLS association without a server challenge")
        ic = self._next_counter()
        reply = sec.gmac(server_challenge, system_title=self.keys.system_title,
                         invocation_counter=ic, keys=self.keys)
        self.invocation_counter = ic   # the GMAC used this counter; the envelope takes the next
        self.invocation_counter += 1
        data = self.action(ASSOCIATION_LN, CURRENT_ASSOCIATION, REPLY_TO_HLS,
                           encode_data(Typed(OCTET_STRING, reply)), what="HLS reply")
        answer = decode_data(data) if data else None
        if not isinstance(answer, bytes) or len(answer) != 17:
            raise MeterAuthenticationError(f"{self.where}: the meter did not prove it holds the keys (HLS pass 4)")
        expected = sec.gmac(self.challenge, system_title=self.meter_title,
                            invocation_counter=int.from_bytes(answer[1:5], "big"), keys=self.keys)
        if answer != expected:
            raise MeterAuthenticationError(f"{self.where}: the meter's HLS answer does not match our keys")

    # -- ciphering ---------------------------------------------------------------------------
    def _next_counter(self) -> int:
        ic = self.invocation_counter
        if ic > 0xFFFFFFFF:
            raise MeterAuthenticationError(f"{self.where}: invocation counter exhausted; new keys needed")
        return ic

    def _cipher(self, tag: int, plain: bytes) -> bytes:
        ic = self._next_counter()
        self.invocation_counter += 1
        body = sec.encrypt(plain, system_title=self.keys.system_title, invocation_counter=ic, keys=self.keys)
        return a.glo_envelope(tag, sec.SC_AUTH_ENCRYPTED, ic, body)

    def _decipher(self, apdu: bytes) -> bytes:
        _plain_tag, control, counter, body = a.open_glo_envelope(apdu)
        if counter <= self.meter_counter:
            raise MeterAuthenticationError(f"{self.where}: replayed answer (invocation counter {counter})")
        plain = sec.decrypt(body, system_title=self.meter_title, invocation_counter=counter,
                            keys=self.keys, security_control=control)
        self.meter_counter = counter
        return plain

    def _exchange(self, apdu: bytes) -> bytes:
        if len(apdu) > self.max_pdu:
            raise MeterUnsupported(f"{self.where}: request of {len(apdu)} bytes exceeds the meter's PDU size")
        if self.ciphered:
            apdu = self._cipher(a.GLO[apdu[0]], apdu)
        answer = self.link.request(apdu)
        if self.ciphered:
            if answer[:1] and answer[0] in (a.EXCEPTION_RESPONSE, a.CONFIRMED_SERVICE_ERROR):
                return answer          # unciphered errors (e.g. the meter failed to decipher)
            if not answer or answer[0] not in a.UNGLO:
                raise MeterAuthenticationError(f"{self.where}: unciphered answer in a ciphered association")
            return self._decipher(answer)
        return answer

    # -- services ----------------------------------------------------------------------------
    def get(self, class_id: int, obis: bytes, attribute: int, access: bytes | None = None,
            *, what: str = "") -> bytes:
        """The attribute's encoded Data, block transfers joined."""
        label = what or f"{class_id}/{obis.hex()}/{attribute}"
        result = a.parse_get_response(self._exchange(a.get_request(class_id, obis, attribute, access)), label)
        if result.block is None:
            return result.data
        raw = bytearray(result.data)
        expected = result.block
        while not result.last:
            if expected >= MAX_BLOCKS:
                raise MeterProtocolError(f"{label}: more than {MAX_BLOCKS} blocks")
            result = a.parse_get_response(self._exchange(a.get_request_next(expected)), label)
            if result.block != expected + 1:
                raise MeterProtocolError(f"{label}: block {result.block} after block {expected}")
            expected = result.block
            raw += result.data
        return bytes(raw)

    def get_value(self, class_id: int, obis: bytes, attribute: int, access: bytes | None = None,
                  *, what: str = "") -> object:
        return decode_data(self.get(class_id, obis, attribute, access, what=what))

    def set(self, class_id: int, obis: bytes, attribute: int, data: bytes, *, what: str = "") -> None:
        a.parse_set_response(self._exchange(a.set_request(class_id, obis, attribute, data)),
                             what or f"set {class_id}/{obis.hex()}/{attribute}")

    def action(self, class_id: int, obis: bytes, method: int, data: bytes | None, *, what: str = "") -> bytes | None:
        return a.parse_action_response(self._exchange(a.action_request(class_id, obis, method, data)),
                                       what or f"action {class_id}/{obis.hex()}/{method}")
