"""IEC 62056-21 / LIS-200 simulators on real lines: TCP gateways (meters sharing a port like an RS-485
bus behind a transparent gateway) and ptys, so pyserial talks to a real tty.

Startable in-process (start/stop, context manager) for tests and benchmarks, or from the CLI.
"""

from __future__ import annotations

import logging
import os
import socket
import termios
import threading
import time
from typing import Callable, Sequence

from utilitarian_sim.gateways import Conversations, Gateways, readable
from utilitarian_sim.iec_engine import IecEngine, LineClosed, LineObservation
from utilitarian_sim.iec_meter import GenericMeterModel, SimIecMeter
from utilitarian_sim.lis200_meter import Lis200Model
from utilitarian_sim.sessions import SessionLog

log = logging.getLogger(__name__)

_SPEEDS = {getattr(termios, f"B{b}"): b for b in
           (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
           if hasattr(termios, f"B{b}")}


class SocketLine:
    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.session_ended = False   # set once its session is recorded as ended

    def peer_closed(self) -> bool:
        """True when the client's close (FIN) has arrived, whether or not the serving thread has
        read it yet."""
        try:
            return readable(self.conn.fileno(), 0) and self.conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # our serving thread closed it already
            return True

    def read(self, timeout: float) -> bytes:
        try:
            if not readable(self.conn.fileno(), timeout):
                return b""
            data = self.conn.recv(4096)
        except OSError:
            raise LineClosed() from None
        if not data:
            raise LineClosed()
        return data

    def write(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except OSError:
            raise LineClosed() from None

    def close(self) -> None:
        self.conn.close()

    def speed(self) -> int | None:
        return None

    def framing(self) -> str | None:
        return None


class PtyLine:
    """The master side of a pty. The simulator keeps the slave open too: it keeps the master
    readable across client reconnects and lets us read the line settings the client applied."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.framing_visible = self._probe_framing()

    def _probe_framing(self) -> bool:
        """Linux ptys force CS8 without parity on every tcsetattr (drivers/tty/pty.c), so a client's
        7E1 cannot be seen from here; probe rather than assume, in case the OS keeps it."""
        attrs = termios.tcgetattr(self.slave)
        trial = list(attrs)
        trial[2] = (trial[2] & ~termios.CSIZE) | termios.CS7 | termios.PARENB
        try:
            termios.tcsetattr(self.slave, termios.TCSANOW, trial)
            seen = termios.tcgetattr(self.slave)[2]
            visible = seen & termios.CSIZE == termios.CS7 and bool(seen & termios.PARENB)
        except termios.error:
            visible = False
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        return visible

    def read(self, timeout: float) -> bytes:
        try:
            return os.read(self.master, 4096) if readable(self.master, timeout) else b""
        except OSError:
            raise LineClosed() from None

    def write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except OSError:
            raise LineClosed() from None

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def speed(self) -> int | None:
        return _SPEEDS.get(termios.tcgetattr(self.slave)[5])

    def framing(self) -> str | None:
        if not self.framing_visible:
            return None
        cflag = termios.tcgetattr(self.slave)[2]
        size = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}[cflag & termios.CSIZE]
        parity = "N" if not cflag & termios.PARENB else ("O" if cflag & termios.PARODD else "E")
        return f"{size}{parity}{2 if cflag & termios.CSTOPB else 1}"


class IecSimulator:
    """Simulated 62056-21 and LIS-200 meters grouped by gateway: one TCP port or one pty each.

    `ports` (TCP) or `devices` (pty paths) say where to connect; `observations` lists the line
    settings the pty side saw; `sessions` records connections per TCP gateway.
    """

    def __init__(self, meters: Sequence[SimIecMeter], *, transport: str = "tcp",
                 host: str = "127.0.0.1", ports: Sequence[int] | None = None,
                 clock: Callable[[], float] = time.time):
        self.transport = transport
        self.host = host
        self.clock = clock
        self.meters = tuple(meters)
        self.gateways = max([1, *(m.gateway + 1 for m in meters)])
        started = clock()
        self.models: dict[tuple[int, str], GenericMeterModel | Lis200Model] = {}
        for number, meter in enumerate(self.meters, start=1):
            key = (meter.gateway, meter.address)
            if key in self.models:
                raise ValueError(f"address {meter.address!r} twice on gateway {meter.gateway}")
            model_class = Lis200Model if meter.dialect == "lis200" else GenericMeterModel
            self.models[key] = model_class(meter, number, started, clock)
        # Each gateway's meters by address, built once: a conversation starts with a lookup here.
        self._by_gateway: list[dict] = [{} for _ in range(self.gateways)]
        for (gateway, address), model in self.models.items():
            self._by_gateway[gateway][address] = model
        self.sessions = SessionLog(clock)
        self.observations: list[LineObservation] = []
        self.ports: list[int] = []
        self.devices: list[str] = []
        self._stop = threading.Event()
        self._conversations = Conversations("iec-sim")
        self._gateways = Gateways(self.gateways, transport, host=host, ports=ports,
                                  on_accept=self._accepted, open_pty=PtyLine, name="iec-sim")
        self._lock = threading.Lock()
        self._live: dict[int, list[SocketLine]] = {}

    def __enter__(self) -> IecSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self._gateways.open()
        self.ports, self.devices = self._gateways.ports, self._gateways.devices
        self._gateways.serve()
        for gateway in range(len(self._gateways.lines)):
            self._conversations.spawn(self._pty_loop, gateway)
        log.info("IEC simulator: %d meters on %d %s gateways", len(self.meters), self.gateways,
                 self.transport)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._gateways.stop_accepting(timeout)
        self._conversations.join(timeout)
        self._gateways.close_lines()

    def _accepted(self, gateway: int, conn: socket.socket) -> None:
        line = SocketLine(conn)
        # A client that closed before this one connected has ended its session, even if its
        # serving thread has not noticed yet: record that first, so a gateway's sessions show
        # the order the clients made, not the order our threads were scheduled in.
        with self._lock:
            earlier_lines = list(self._live.get(gateway, []))
        for earlier in earlier_lines:
            if earlier.peer_closed():
                self._end_session(gateway, earlier)
        self.sessions.started(self._gateways.names[gateway])
        with self._lock:
            self._live.setdefault(gateway, []).append(line)
        self._conversations.spawn(self._serve_connection, gateway, line)

    def _end_session(self, gateway: int, line: SocketLine) -> None:
        with self._lock:
            if line.session_ended:
                return
            line.session_ended = True
            if line in self._live.get(gateway, []):
                self._live[gateway].remove(line)
        self.sessions.ended(self._gateways.names[gateway])

    def _serve_connection(self, gateway: int, line: SocketLine) -> None:
        name = self._gateways.names[gateway]
        try:
            IecEngine(line, self._by_gateway[gateway], self._stop, self.observations).serve()
        except Exception:  # one broken conversation must not take the gateway down
            log.exception("simulated IEC gateway %s: conversation failed; connection closed", name)
        finally:
            self._end_session(gateway, line)
            line.close()

    def _pty_loop(self, gateway: int) -> None:
        line = self._gateways.lines[gateway]
        try:
            IecEngine(line, self._by_gateway[gateway], self._stop, self.observations).serve()
        except Exception:
            log.exception("simulated IEC pty %s failed; the line is dead", line.path)

    def interfaces(self) -> list[str]:
        return list(self._gateways.names)

    def model(self, meter: SimIecMeter):
        return self.models[(meter.gateway, meter.address)]

    def url(self, meter: SimIecMeter) -> str:
        protocol = "lis200" if meter.dialect == "lis200" else "iec62056-21"
        where = self._gateways.names[meter.gateway]
        if self.transport == "pty":
            return f"{protocol}+serial://{where}?address={meter.address}"
        return f"{protocol}+tcp://{where}?address={meter.address}"

    def meter_entries(self, *, timezone: str | None = None) -> list[dict]:
        """Rows for the registry's meter list (see docs/meters.md). A gateway with several meters
        is an RS-485 bus: can_block, one conversation at a time."""
        rows = []
        names = self.interfaces()
        for number, meter in enumerate(self.meters, start=1):
            model = self.model(meter)
            shared = len(self._by_gateway[meter.gateway]) > 1
            row = {
                "name": meter.name or f"sim-{meter.dialect}-{number:04d}",
                "execution_type": "generic_lis200" if meter.dialect == "lis200" else "generic_iec6205621",
                "meter_type": "sim_ek260" if meter.dialect == "lis200" else "sim_iec62056_21",
                "url": self.url(meter),
                "interface": names[meter.gateway],
                "can_block": shared or self.transport == "pty",
                "timezone": timezone or meter.timezone,
                "series": model.series(),
            }
            if meter.password:
                row["password"] = meter.password
            rows.append(row)
        return rows
