"""A mixed simulated fleet (Modbus gateways, IEC 62056-21 and LIS-200 meters over TCP) and the
meter-list TOML the registry importer reads (format: docs/meters.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

from utilitarian_sim.faults import Faults
from utilitarian_sim.iec_meter import SimIecMeter
from utilitarian_sim.iec_server import IecSimulator
from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

MAX_DEVICES_PER_GATEWAY = 247


def modbus_meters(count: int, *, gateways: int = 1, types: Sequence[str] = ("eastron_sdm630",),
                  faults: Faults = Faults()) -> list[SimModbusMeter]:
    """`count` meters spread evenly over `gateways`, device ids 1.. per gateway, types round-robin."""
    if count < 0 or gateways < 1:
        raise ValueError("need count >= 0 and at least one gateway")
    per_gateway = -(-count // gateways) if count else 0
    if per_gateway > MAX_DEVICES_PER_GATEWAY:
        raise ValueError(f"{count} meters need at least {-(-count // MAX_DEVICES_PER_GATEWAY)} "
                         f"gateways (at most {MAX_DEVICES_PER_GATEWAY} device ids each)")
    return [SimModbusMeter(device_id=i % per_gateway + 1, meter_type=types[i % len(types)],
                           gateway=i // per_gateway, faults=faults) for i in range(count)]


def iec_meters(count: int, *, gateways: int = 1, dialect: str = "iec", password: str | None = None,
               battery: bool = False, faults: Faults = Faults(), first_address: int = 10000001,
               timezone: str = "UTC") -> list[SimIecMeter]:
    """`count` meters with 8-digit addresses, spread over `gateways` (shared lines = RS-485 buses)."""
    per_gateway = max(1, -(-count // max(gateways, 1)))
    ident = "EK260" if dialect == "lis200" else "SIM62056"
    manufacturer = "Els" if dialect == "lis200" else "SIm"
    return [SimIecMeter(address=str(first_address + i), gateway=i // per_gateway, dialect=dialect,
                        ident=ident, manufacturer=manufacturer, password=password, battery=battery,
                        faults=faults, timezone=timezone)
            for i in range(count)]


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to the meter list")


def render_meter_list(entries: Sequence[dict], *, comment: str = "") -> str:
    """`[[meters]]` tables, one per entry, keys in a fixed order."""
    order = ("name", "execution_type", "meter_type", "url", "interface", "can_block", "timezone",
             "password", "series")
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    for entry in entries:
        lines.append("")
        lines.append("[[meters]]")
        for key in order + tuple(k for k in entry if k not in order):
            if key in entry and entry[key] is not None:
                lines.append(f"{key} = {_toml_value(entry[key])}")
    return "\n".join(lines) + "\n"


def write_meter_list(path: str, entries: Sequence[dict], *, comment: str = "") -> None:
    """Write atomically (rename), so a script waiting for the file never reads half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".meters-", suffix=".toml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_meter_list(entries, comment=comment))
        os.chmod(temp, 0o600)  # simulated passwords are still passwords
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


@dataclass
class FleetSimulator:
    """Modbus, IEC and LIS-200 simulators started and stopped together."""

    modbus: ModbusFleetSimulator | None = None
    iec: IecSimulator | None = None
    lis200: IecSimulator | None = None

    def parts(self) -> list:
        return [p for p in (self.modbus, self.iec, self.lis200) if p is not None]

    def start(self) -> None:
        started = []
        try:
            for part in self.parts():
                part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                part.stop()
            raise

    def stop(self) -> None:
        for part in reversed(self.parts()):
            part.stop()

    def __enter__(self) -> FleetSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def meter_entries(self) -> list[dict]:
        entries: list[dict] = []
        for part in self.parts():
            entries.extend(part.meter_entries())
        return entries
