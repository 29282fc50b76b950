"""A simulated LIS-200 volume converter (EK260-like): values by address, an hourly measurement-period
archive read in partial blocks, the device clock and the supplier/customer locks.

The archive layout is illustrative (column sources and units as attributes 4 and 3), consistent with
what `protocols.lis200` reads; it does not claim to reproduce a particular firmware.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from utilitarian_sim.iec_meter import SimIecMeter, SimulatedDevice
from utilitarian_sim.values import simulated_value

# The device's own facts (Elster LIS-200 description), not the client's constants.
TIME_FORMAT = "%Y-%m-%d,%H:%M:%S"
TIME_ADDRESS = "1:400.0"
LOCKS = {"supplier": ("3:170", "3:171"), "customer": ("4:170", "4:171")}  # (status, key)
ARCHIVE = 3
# (source address, unit): order number, archive order number, time, Vb, Vm, p, T, status, CRC.
ARCHIVE_COLUMNS = (("0:1", None), ("3:0", None), ("1:400", None), ("2:300", "m3"),
                   ("4:300", "m3"), ("7:310", "bar"), ("6:310", "C"), ("3:1", None),
                   ("3:20", None))
TIME_COLUMN = 3  # the control position of the time column (1-based)
INTERVAL = 3600.0
HISTORY_ROWS = 72
VALUES = {"2:300.0": "m3", "4:300.0": "m3", "7:310.0": "bar", "6:310.0": "C"}
PROTECTED = {TIME_ADDRESS}  # writes need the customer lock open


class Lis200Model(SimulatedDevice):
    """State of one simulated EK device. Every method returns text for the answer, or an error
    code int (answered as "#dddd")."""

    def __init__(self, spec: SimIecMeter, number: int, started: float,
                 clock: Callable[[], float] = time.time):
        super().__init__(spec, number, started, clock)
        self._lock = threading.Lock()
        self.locks = {"supplier": False, "customer": False}
        # The archive's first row: HISTORY_ROWS intervals before the start, on an interval boundary.
        # Rows are written at true instants and stamped in the device's local time, as a device
        # that follows summer time does: the repeated autumn hour gives two rows with one time.
        first = self.meter_clock.now().astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        self.archive_start_utc = first - timedelta(seconds=INTERVAL * HISTORY_ROWS)
        self.archive_start = self.archive_start_utc.astimezone(self.meter_clock.tz).replace(tzinfo=None)

    def _quantity(self, address: str, elapsed: float) -> str:
        unit = VALUES[address]
        value = simulated_value(self.number, address, unit, elapsed, quantum=Decimal("0.0001"))
        return f"{value}*{unit}"

    def read(self, address: str) -> str | int:
        if address in self.spec.values:
            return self.spec.values[address]
        if address == TIME_ADDRESS:
            return self._local_text(self.meter_clock.now())
        if address in VALUES:
            return self._quantity(address, self._clock() - self.started)
        for name, (status, _key) in LOCKS.items():
            if address == status:
                with self._lock:
                    return "1" if self.locks[name] else "0"
        return 1  # unknown address

    def write(self, address: str, value: str) -> int | None:
        """None for success (answered with ACK)."""
        with self._lock:
            for name, (status, key) in LOCKS.items():
                if address == key:
                    if self.spec.password is None or value != self.spec.password:
                        return 17  # wrong access code
                    self.locks[name] = True
                    return None
                if address == status:
                    if value.strip() != "0":
                        return 13
                    self.locks[name] = False
                    return None
            if address in PROTECTED:
                if not self.locks["customer"]:
                    return 19  # no write authorization
                try:
                    local = datetime.strptime(value, TIME_FORMAT)
                except ValueError:
                    return 13
                self.meter_clock.set(local)
                self.writes.append((address, value))
                return None
        return 9 if address in VALUES else 1

    # -- archive -----------------------------------------------------------------------------
    def _local_text(self, instant: datetime) -> str:
        local = instant.astimezone(self.meter_clock.tz)
        text = local.strftime(TIME_FORMAT)
        if self.spec.dst_flag:  # "S" in summer time, "W" in standard time
            text += ",S" if local.dst() else ",W"
        return text

    def _rows(self) -> list[list[str]]:
        now = self.meter_clock.now().astimezone(timezone.utc)
        rows = []
        n = 0
        while True:
            stamp = self.archive_start_utc + timedelta(seconds=INTERVAL * n)
            if stamp > now:
                return rows
            elapsed = (stamp - self.archive_start_utc).total_seconds()
            row = [str(10000 + n), str(n + 1), self._local_text(stamp)]
            row += [self._quantity(a + ".0", elapsed).split("*")[0] for a, _u in ARCHIVE_COLUMNS[3:7]]
            row += ["0", f"{(n * 7919) % 65536:04X}"]
            rows.append(row)
            n += 1

    def archive(self, archive: int, attribute: str, params: str) -> list[list[str]] | int:
        """Rows for `archive:V.attribute(position;from;to;count)`; attribute 3 = units,
        4 = sources (one row), 0 = values in the range."""
        if archive != ARCHIVE:
            return 100
        parts = (params.split(";") + ["", "", "", ""])[:4]
        if attribute == "4":
            return [[a for a, _u in ARCHIVE_COLUMNS]]
        if attribute == "3":
            return [[u or "" for _a, u in ARCHIVE_COLUMNS]]
        if attribute != "0":
            return 4
        try:
            position = int(parts[0] or "1")
        except ValueError:
            return 200
        if not 1 <= position <= len(ARCHIVE_COLUMNS):
            return 101
        low, high = parts[1], parts[2]
        column = position - 1

        def key(text: str):
            return text[:19] if column == TIME_COLUMN - 1 else int(text)

        try:
            selected = [row for row in self._rows()
                        if (not low or key(row[column]) >= key(low))
                        and (not high or key(row[column]) <= key(high))]
        except ValueError:
            return 200
        return selected if selected else 104

    def series(self) -> list[str]:
        return [a for a, u in ARCHIVE_COLUMNS if u]
