"""Simulated DLMS/COSEM meters on real lines: one meter per TCP port (the wrapper, or HDLC through a
transparent gateway) or per pty (HDLC, as on a serial line), with latency and faults:
`timeout`, `garble`, `disconnect`, `wrong_address` (answers as another device).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from utilitarian_sim import dlms_codec as c
from utilitarian_sim.dlms_meter import Association, DlmsMeterState, SimDlmsMeter
from utilitarian_sim.faults import FaultInjector
from utilitarian_sim.iec_engine import LineClosed
from utilitarian_sim.line_server import LineServer

log = logging.getLogger(__name__)
IDLE = 30.0          # seconds a meter keeps a silent connection


class DlmsConversation:
    """One connection (TCP) or the life of one pty: link layer, association, APDUs."""

    def __init__(self, line, state: DlmsMeterState, faults: FaultInjector, hdlc: bool, stop):
        self.line, self.state, self.faults, self.hdlc, self.stop = line, state, faults, hdlc, stop
        self.meter = state.meter
        self.buffer = bytearray()
        self.association: Association | None = None
        self.nr = self.ns = 0                    # HDLC: next expected from client, next we send
        self.segments = bytearray()
        self.pending: list[bytes] = []           # answer segments still to send (HDLC)
        self.client_hdlc = b""

    # -- line ----------------------------------------------------------------------------------
    def _read(self) -> None:
        if self.stop.is_set():
            raise LineClosed()
        data = self.line.read(0.2)
        self.buffer += data
        if data:
            self.last = time.monotonic()

    def run(self) -> None:
        self.last = time.monotonic()
        while time.monotonic() - self.last < IDLE:
            self._read()
            while True:
                request = self._take()
                if request is None:
                    break
                self._handle_unit(request)

    def _take(self):
        if self.hdlc:
            try:
                return c.hdlc_take(self.buffer)
            except c.Malformed:
                return None                    # a real meter drops a frame with a bad FCS
        if len(self.buffer) < 8:
            return None
        size = int.from_bytes(self.buffer[6:8], "big")
        if len(self.buffer) < 8 + size:
            return None
        unit = bytes(self.buffer[:8 + size])
        del self.buffer[:8 + size]
        return unit

    def _send(self, data: bytes, fault: str | None) -> None:
        if self.meter.faults.latency:
            time.sleep(self.meter.faults.latency)
        if fault == "garble":
            data = self.faults.noise(len(data))
        elif fault == "disconnect":
            raise LineClosed()
        self.line.write(data)

    # -- link layer ------------------------------------------------------------------------------
    def _handle_unit(self, unit) -> None:
        if self.hdlc:
            self._handle_frame(unit)
            return
        src, dst = int.from_bytes(unit[2:4], "big"), int.from_bytes(unit[4:6], "big")
        if dst != self.meter.server:
            return                              # not for this logical device: silence
        fault = self.faults.pick(("timeout", "garble", "disconnect", "wrong_address"))
        answer = self._apdu(src, unit[8:])
        if answer is None or fault == "timeout":
            return
        source = self.meter.server + 1 if fault == "wrong_address" else self.meter.server
        self._send(c.wrapper(source, src, answer), fault)

    def _our_address(self, dest: bytes) -> bool:
        m = self.meter
        if len(dest) == 2:
            return dest == bytes([m.server << 1, (m.physical << 1) | 1])
        if len(dest) == 4:
            return dest == bytes([(m.server >> 7) << 1, (m.server & 0x7F) << 1,
                                  (m.physical >> 7) << 1, ((m.physical & 0x7F) << 1) | 1])
        return len(dest) == 1 and dest[0] == (m.server << 1) | 1

    def _reply(self, control: int, info: bytes = b"", segmented: bool = False, fault: str | None = None) -> None:
        dest = self.client_hdlc
        src = self.our_hdlc
        if fault == "wrong_address":
            src = bytes([src[0] + 2]) + src[1:]
        self._send(c.hdlc_encode(c.HdlcFrame(dest, src, control, info, segmented)), fault)

    def _handle_frame(self, frame: c.HdlcFrame) -> None:
        if not self._our_address(frame.dest):
            return
        self.client_hdlc, self.our_hdlc = frame.src, frame.dest
        control = frame.control
        fault = self.faults.pick(("timeout", "garble", "disconnect", "wrong_address"))
        if fault == "timeout":
            return
        if control & ~0x10 == 0x83:                                   # SNRM
            self.nr = self.ns = 0
            self.segments.clear()
            params = bytes([0x81, 0x80, 0x12, 0x05, 0x01, 0x80, 0x06, 0x01, 0x80,
                            0x07, 0x04, 0, 0, 0, 1, 0x08, 0x04, 0, 0, 0, 1])
            self._reply(0x73, params, fault=fault)
            return
        if control & ~0x10 == 0x43:                                   # DISC
            self.association = None
            self._reply(0x73, fault=fault)
            return
        if control & 0x0F == 0x01:                                    # RR: next segment please
            if self.pending:
                self._send_segment(fault)
            return
        if control & 1:
            self._reply(0x1F, fault=fault)                            # DM: not understood
            return
        if (control >> 1) & 7 != self.nr:
            return                                                    # out of sequence: ignore
        self.nr = (self.nr + 1) & 7
        self.segments += frame.info
        if frame.segmented:
            self._reply(((self.nr & 7) << 5) | 0x11, fault=fault)     # RR
            return
        data = bytes(self.segments)
        self.segments.clear()
        if data[:3] != b"\xE6\xE6\x00":
            return
        client = frame.src[0] >> 1
        answer = self._apdu(client, data[3:])
        if answer is None:
            return
        payload = b"\xE6\xE7\x00" + answer
        self.pending = [payload[i:i + 128] for i in range(0, len(payload), 128)]
        self._send_segment(fault)

    def _send_segment(self, fault: str | None) -> None:
        chunk = self.pending.pop(0)
        control = ((self.nr & 7) << 5) | 0x10 | ((self.ns & 7) << 1)
        self.ns = (self.ns + 1) & 7
        self._reply(control, chunk, segmented=bool(self.pending), fault=fault)

    # -- application layer -----------------------------------------------------------------------
    def _apdu(self, client: int, apdu: bytes) -> bytes | None:
        self.state.requests += 1
        if not apdu:
            return None
        if apdu[0] == 0x60:
            self.association = Association(client, self.state)
            return self.association.associate(apdu)
        if apdu[0] == 0x62:
            self.association = None
            return bytes([0x63, 0x03, 0x80, 0x01, 0x00])
        assoc = self.association
        if assoc is None or assoc.client != client or not (assoc.established or assoc.hls_pending):
            return bytes([0xD8, 0x01, 0x01])                          # exception: no association
        try:
            return assoc.serve(apdu)
        except (c.Malformed, IndexError, KeyError):
            return bytes([0xD8, 0x02, 0x02])


class DlmsSimulator:
    """Simulated DLMS meters, one per TCP port or pty. `hdlc`: None = HDLC on ptys and the wrapper
    on TCP; True = HDLC on TCP too (a transparent serial gateway)."""

    def __init__(self, meters: Sequence[SimDlmsMeter], *, transport: str = "tcp", hdlc: bool | None = None,
                 host: str = "127.0.0.1", clock: Callable[[], float] = time.time):
        self.meters = tuple(meters)
        self.hdlc = transport == "pty" if hdlc is None else hdlc
        self.states = [DlmsMeterState(m, n, clock) for n, m in enumerate(self.meters, start=1)]
        self._faults = [FaultInjector(m.faults, seed_offset=n) for n, m in enumerate(self.meters)]
        self.server = LineServer(len(self.meters), self._serve, transport=transport, host=host, name="dlms-sim",
                                 clock=clock)

    @property
    def sessions(self):
        return self.server.sessions

    def _serve(self, line, gateway: int, stop) -> None:
        DlmsConversation(line, self.states[gateway], self._faults[gateway], self.hdlc, stop).run()

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> DlmsSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def state(self, meter: SimDlmsMeter) -> DlmsMeterState:
        return self.states[self.meters.index(meter)]

    def url(self, meter: SimDlmsMeter, *, client: int | None = None, keys: str | None = None) -> str:
        index = self.meters.index(meter)
        where = self.server.interfaces()[index]
        security = meter.security
        client = client if client is not None else (16 if security == "none" else 1)
        params = [f"client={client}", f"server={meter.server}"]
        if self.hdlc:
            params.append(f"physical={meter.physical}")
        if security != "none" and client != 16:
            params.append(f"security={security}")
        if security == "hls-gmac":
            params.append("invocation_counter=0-0:43.1.0*255")
        if keys:
            params.append(f"keys={keys}")
        scheme = "dlms+serial" if self.server.transport == "pty" else "dlms+tcp"
        return f"{scheme}://{where}?{'&'.join(params)}"

    def key_file_text(self, meter: SimDlmsMeter) -> str:
        """The key file a client needs for this meter (TOML, see docs/meters.md)."""
        lines = []
        if meter.security == "hls-gmac":
            lines += [f'authentication_key = "{meter.authentication_key.hex()}"',
                      f'encryption_key = "{meter.encryption_key.hex()}"']
        if meter.security == "lls":
            lines.append(f'password = "{meter.password}"')
        return "\n".join(lines) + "\n"

    def meter_entries(self, *, keys: dict | None = None) -> list[dict]:
        """Rows for the registry's meter list; `keys` maps a meter's name to its key file reference."""
        rows = []
        for number, meter in enumerate(self.meters, start=1):
            name = meter.name or f"sim-dlms-{number:04d}"
            rows.append({
                "name": name, "execution_type": "generic_dlms", "meter_type": "sim_dlms",
                "url": self.url(meter, keys=(keys or {}).get(name)),
                "interface": self.server.interfaces()[number - 1],
                "can_block": self.server.transport == "pty", "timezone": meter.timezone,
                "series": ["1-0:1.8.0", "1-0:2.8.0", "1-0:32.7.0", "1-0:31.7.0", "1-0:1.7.0"],
            })
        return rows
