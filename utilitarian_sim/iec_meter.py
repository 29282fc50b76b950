"""Simulated IEC 62056-21 meters: the meter description, the generic (electricity) meter's data, and
its clock. The dialogue itself lives in `iec_engine`; LIS-200 devices in `lis200_meter`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable, Mapping
from zoneinfo import ZoneInfo

from utilitarian_sim.faults import FaultInjector, Faults
from utilitarian_sim.values import simulated_value

# OBIS id -> unit of the values a generic simulated meter reports (readout order).
GENERIC_SERIES = (("1.8.0", "kWh"), ("1.8.1", "kWh"), ("1.8.2", "kWh"), ("2.8.0", "kWh"),
                  ("1-0:1.8.0*255", "kWh"), ("1.6.0", "kW"), ("32.7.0", "V"), ("31.7.0", "A"))


@dataclass(frozen=True)
class SimIecMeter:
    """One simulated meter on gateway (TCP port or pty) number `gateway`.

    manufacturer: lower-case third letter = 20 ms reaction time, upper case = 200 ms.
    baud_char: the speed proposed for the switch ("5" = 9600). enhanced: "\\W" characters.
    password: P1 answer required for W1 (generic) or the customer lock key (LIS-200).
    values: pins OBIS ids (or LIS-200 addresses) to fixed "value" or "value*unit" text.
    battery: needs the NUL wake-up sequence before it answers.
    clock_offset: seconds the meter's clock is ahead (negative: behind) at start.
    dialect: "iec" (electricity meter) or "lis200" (Elster EK2x0 volume converter).
    dst_flag: LIS-200 time values carry ",S" (summer) or ",W" (winter) after the time.
    profile_period: load profile (P.01) registration period in minutes; two days are kept.
    profile_missing: UTC instants ("2025-10-26T01:15:00Z") the profile has no entry for (a gap).
    profile_status: UTC instant -> status bits of that interval (0x80 power failure, 0x20 clock
    adjusted); each also becomes a P.98 event log entry.
    """

    address: str
    gateway: int = 0
    manufacturer: str = "SIm"
    ident: str = "SIM62056"
    baud_char: str = "5"
    enhanced: str = ""
    password: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    error_register: str = "00000000"
    battery: bool = False
    clock_offset: float = 0.0
    timezone: str = "UTC"
    dialect: str = "iec"
    faults: Faults = Faults()
    name: str = ""
    dst_flag: bool = False
    profile_period: int = 15
    profile_missing: tuple[str, ...] = ()
    profile_status: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dialect not in ("iec", "lis200"):
            raise ValueError("dialect must be 'iec' or 'lis200'")
        if len(self.manufacturer) != 3 or not self.manufacturer.isalpha():
            raise ValueError("manufacturer must be 3 letters")

    @property
    def identification(self) -> str:
        enhanced = "".join("\\" + c for c in self.enhanced)
        return f"/{self.manufacturer}{self.baud_char}{enhanced}{self.ident}"

    @property
    def reaction_time(self) -> float:
        return 0.02 if self.manufacturer[2].islower() else 0.2


class MeterClock:
    """The meter's own clock: real time plus an offset that W1 time/date writes change."""

    def __init__(self, offset: float, tz: str, clock: Callable[[], float]):
        self._offset = offset
        self._clock = clock
        self.tz = ZoneInfo(tz)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.fromtimestamp(self._clock() + self._offset, timezone.utc).astimezone(self.tz)

    def set(self, local: datetime) -> None:
        """Set the meter's local wall-clock time (naive, in the meter's zone)."""
        with self._lock:
            target = local.replace(tzinfo=self.tz).timestamp()
            self._offset = target - self._clock()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset


class SimulatedDevice:
    """What every simulated 62056-21 device has: its spec, its own clock, its fault injector and
    a record of the writes it took (for tests)."""

    def __init__(self, spec: SimIecMeter, number: int, started: float,
                 clock: Callable[[], float] = time.time):
        self.spec = spec
        self.number = number
        self.started = started
        self._clock = clock
        self.meter_clock = MeterClock(spec.clock_offset, spec.timezone, clock)
        # One injector per meter, shared by every connection, so a fault script runs once.
        self.injector = FaultInjector(spec.faults, seed_offset=number)
        self.writes: list[tuple[str, str]] = []  # what W1 changed


class GenericMeterModel(SimulatedDevice):
    """Data of a simulated electricity meter: readout lines, R1 values, W1 of 0.9.1/0.9.2."""

    def value(self, address: str) -> str | None:
        """"value*unit" (or "value") text for `address`, None if the meter does not know it."""
        if address in self.spec.values:
            return self.spec.values[address]
        if address in ("0.9.1", "C.1.1"):
            return self.meter_clock.now().strftime("%H:%M:%S")
        if address == "0.9.2":
            return self.meter_clock.now().strftime("%y-%m-%d")
        if address in ("0.0.0", "C.1.0"):
            return self.spec.address
        if address == "F.F":
            return self.spec.error_register
        for series, unit in GENERIC_SERIES:
            if series == address:
                elapsed = self._clock() - self.started
                value = simulated_value(self.number, series.split("*")[0], unit, elapsed,
                                        quantum=Decimal("0.001"))
                width = 11 if unit == "kWh" else 7
                return f"{value:0{width}.3f}*{unit}"
        return None

    def readout_lines(self) -> list[str]:
        lines = [f"0.0.0({self.spec.address})", f"F.F({self.value('F.F')})",
                 f"0.9.1({self.value('0.9.1')})", f"0.9.2({self.value('0.9.2')})"]
        for series, _unit in GENERIC_SERIES:
            if series == "1.6.0":  # maximum demand: value plus the time it happened
                lines.append(f"1.6.0({self.value(series)})(23-01-05 12:15)")
            else:
                lines.append(f"{series}({self.value(series)})")
        lines.extend(f"{a}({v})" for a, v in self.spec.values.items()
                     if a not in dict(GENERIC_SERIES) and a not in ("F.F", "0.9.1", "0.9.2"))
        return lines

    def write(self, address: str, value: str) -> bool:
        """Apply a W1; False if the address is not writable."""
        now = self.meter_clock.now().replace(tzinfo=None)
        digits = "".join(c for c in value if c.isdigit())
        try:
            if address == "0.9.1" and len(digits) == 6:
                self.meter_clock.set(now.replace(hour=int(digits[:2]), minute=int(digits[2:4]),
                                                 second=int(digits[4:])))
            elif address == "0.9.2" and len(digits) in (6, 7):
                digits = digits[-6:]
                self.meter_clock.set(now.replace(year=2000 + int(digits[:2]), month=int(digits[2:4]),
                                                 day=int(digits[4:])))
            else:
                return False
        except ValueError:
            return False
        self.writes.append((address, value))
        return True

    def series(self) -> list[str]:
        return [s for s, _u in GENERIC_SERIES]

    # -- load profile (VDEW layout, as DIN EN 62056-21 annex describes it) ---------------------
    def _profile_instants(self) -> list[datetime]:
        period = timedelta(minutes=self.spec.profile_period)
        now = self.meter_clock.now().astimezone(timezone.utc)
        last = datetime.fromtimestamp(now.timestamp() // period.total_seconds() * period.total_seconds(),
                                      timezone.utc)
        count = int(timedelta(days=2) / period)
        return [last - period * i for i in range(count, -1, -1)]

    def _request_instant(self, text: str) -> datetime | None:
        text = text.strip()
        if not text:
            return None
        season, digits = (text[0], text[1:]) if len(text) == 11 else ("", text)
        local = datetime.strptime(digits[:10], "%y%m%d%H%M")
        if season == "2":
            return local.replace(tzinfo=timezone.utc)
        return local.replace(tzinfo=self.meter_clock.tz, fold=0 if season != "0" else 1).astimezone(timezone.utc)

    def load_profile(self, address: str, params: str) -> list[str] | None:
        if address not in ("P.01", "P.98"):
            return None
        low_text, _sep, high_text = params.partition(";")
        try:
            low, high = self._request_instant(low_text), self._request_instant(high_text)
        except ValueError:
            return None
        tz = self.meter_clock.tz
        missing = {datetime.fromisoformat(m.replace("Z", "+00:00")) for m in self.spec.profile_missing}
        status_of = {datetime.fromisoformat(k.replace("Z", "+00:00")): v for k, v in self.spec.profile_status.items()}
        lines, previous = [], None
        for instant in self._profile_instants():
            if instant in missing or (low and instant < low) or (high and instant > high):
                continue
            local = instant.astimezone(tz)
            season = "1" if local.dst() else "0"
            status = (0x08 if local.dst() else 0) | status_of.get(instant, 0)
            stamp = season + local.strftime("%y%m%d%H%M")
            if address == "P.98":
                if status & ~0x08:
                    lines.append(f"P.98({stamp}00)({status:02X})()(0)")
                continue
            expected = previous[0] + timedelta(minutes=self.spec.profile_period) if previous else None
            if previous is None or instant != expected or status != previous[1]:
                lines.append(f"P.01({stamp})({status:02X})({self.spec.profile_period})(2)"
                             f"(1.5.0)(kW)(1.8.0)(kWh)")
            minutes = int((instant - datetime(2020, 1, 1, tzinfo=timezone.utc)).total_seconds() // 60)
            lines.append(f"({self.number + 0.5:.3f})({minutes * self.number / 100:.2f})")
            previous = (instant, status)
        return lines
