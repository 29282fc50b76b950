"""The two DLMS/COSEM lower layers a poller uses: the TCP-UDP wrapper (IEC 62056-9-7, over TCP) and
HDLC (IEC 62056-46, over a serial line or a transparent gateway). Each carries whole APDUs:
`request(apdu) -> apdu`. Every wait goes through the deadline-bounded Channel.
"""

from __future__ import annotations

import logging

from utilitarian.amr.errors import MeterError, MeterProtocolError, MeterTimeout
from utilitarian.amr.protocols import dlms_hdlc as h
from utilitarian.amr.protocols.dlms_axdr import DlmsDecodeError
from utilitarian.amr.protocols.transport import Channel

log = logging.getLogger(__name__)

WRAPPER_VERSION = 1
MAX_APDU = 0xFFFF


class WrongAddress(MeterProtocolError):
    """An answer from another device (another logical device, another HDLC station)."""


def extract_wrapper(buffer: bytearray) -> tuple[int, tuple[int, int, bytes]] | None:
    """(consumed, (source wport, destination wport, APDU)) of one wrapper PDU, or None for more."""
    if len(buffer) < 8:
        return None
    version = int.from_bytes(buffer[0:2], "big")
    if version != WRAPPER_VERSION:
        raise DlmsDecodeError(f"not a DLMS wrapper header (version {version})")
    length = int.from_bytes(buffer[6:8], "big")
    if len(buffer) < 8 + length:
        return None
    return 8 + length, (int.from_bytes(buffer[2:4], "big"), int.from_bytes(buffer[4:6], "big"),
                        bytes(buffer[8:8 + length]))


class WrapperLink:
    """Wrapper PDUs on a TCP stream: source/destination wPorts are the client SAP and the server's
    logical device address."""

    max_apdu = MAX_APDU

    def __init__(self, channel: Channel, client: int, server: int):
        self.channel, self.client, self.server = channel, client, server

    def connect(self) -> None:
        pass

    def request(self, apdu: bytes) -> bytes:
        header = (WRAPPER_VERSION.to_bytes(2, "big") + self.client.to_bytes(2, "big")
                  + self.server.to_bytes(2, "big") + len(apdu).to_bytes(2, "big"))
        self.channel.send(header + apdu)
        source, destination, answer = self.channel.receive(extract_wrapper, "DLMS wrapper PDU")
        if (source, destination) != (self.server, self.client):
            raise WrongAddress(f"answer from logical device {source} to client {destination}; "
                               f"expected {self.server} to {self.client}")
        return answer

    def disconnect(self) -> None:
        pass


class HdlcLink:
    """A normal-response-mode HDLC connection: SNRM/UA, I-frames with segmentation both ways
    (window 1), RR to ask for the next segment, DISC at the end."""

    def __init__(self, channel: Channel, client: int, server: int, physical: int | None):
        self.channel = channel
        self.destination = h.server_address(server, physical)
        self.source = h.client_address(client)
        self.send_seq = 0
        self.receive_seq = 0
        self.max_send = 128        # max information field we may send (the server's receive size)
        self.connected = False

    @property
    def max_apdu(self) -> int:
        return MAX_APDU

    def _frame(self, control: int, info: bytes = b"", segmented: bool = False) -> None:
        self.channel.send(h.build_frame(self.destination, self.source, control, info, segmented))

    def _receive(self, what: str) -> h.Frame:
        frame = self.channel.receive(h.extract_frame, what)
        if frame.source != self.destination or frame.destination != self.source:
            raise WrongAddress(f"HDLC frame from station {frame.source.hex()} to {frame.destination.hex()}; "
                               f"expected {self.destination.hex()} to {self.source.hex()}")
        if frame.kind == "FRMR":
            raise MeterProtocolError("the meter rejected our HDLC frame (FRMR)")
        if frame.kind == "DM":
            raise MeterProtocolError("the meter's HDLC layer is disconnected (DM)")
        return frame

    def connect(self) -> None:
        self._frame(h.SNRM | h.PF)
        frame = self._receive("HDLC UA")
        if frame.kind != "UA":
            raise MeterProtocolError(f"expected UA after SNRM, got {frame.kind}")
        params = h.parse_ua_parameters(frame.info)
        # The server's receive size (its parameter 6) caps what we send; 128 is the default.
        self.max_send = max(16, min(params.get(6, 128), 2030))
        self.send_seq = self.receive_seq = 0
        self.connected = True

    def request(self, apdu: bytes) -> bytes:
        data = h.LLC_REQUEST + apdu
        chunks = [data[i:i + self.max_send] for i in range(0, len(data), self.max_send)] or [b""]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            self._frame(h.i_control(self.send_seq, self.receive_seq), chunk, segmented=more)
            self.send_seq = (self.send_seq + 1) & 7
            if more:   # window 1: the server acknowledges each segment with RR
                frame = self._receive("HDLC RR")
                if frame.kind != "RR":
                    raise MeterProtocolError(f"expected RR for a segment, got {frame.kind}")
        answer = bytearray()
        while True:
            frame = self._receive("HDLC I-frame")
            if frame.kind != "I":
                raise MeterProtocolError(f"expected an I-frame, got {frame.kind}")
            if frame.send_sequence != self.receive_seq:
                raise MeterProtocolError(f"HDLC sequence {frame.send_sequence}, expected {self.receive_seq}")
            self.receive_seq = (self.receive_seq + 1) & 7
            answer += frame.info
            if len(answer) > MAX_APDU + 3:
                raise MeterProtocolError("answer longer than the largest APDU")
            if not frame.segmented:
                break
            self._frame(h.rr_control(self.receive_seq))
        if not answer.startswith(h.LLC_RESPONSE):
            raise DlmsDecodeError("answer without the LLC header E6 E7 00")
        return bytes(answer[3:])

    def disconnect(self) -> None:
        if not self.connected:
            return
        self.connected = False
        try:
            self._frame(h.DISC | h.PF)
            self._receive("HDLC UA to DISC")
        except (MeterError, MeterTimeout) as exc:
            log.debug("HDLC disconnect not confirmed (%s); the meter times out on its own", exc)
