"""The platform's AMR model as frozen values: meters, their types, configs and interfaces, AMR tasks
and groups, readings, staged readings, system events, dispatched rounds and task runs.

The store returns these; nothing here talks to a database. A meter's password is carried apart from
its URL and never shown by repr.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

UTC = dt.timezone.utc

# Namespace of every id the pipeline derives (jobs, events, rounds): stable across releases, since
# a changed namespace would make a repeated dispatch publish every job again.
ID_NAMESPACE = uuid.UUID("5b0c6f0e-2d1a-4f43-9a83-7f2f0c1d6e11")

OUTCOMES = ("pending", "done", "failed")


@dataclass(frozen=True)
class NetworkInterface:
    """The endpoint meters are reached through (a gateway's host:port, or a serial device).
    `can_block`: the interface carries one session at a time (a serial line behind a converter)."""

    host: str
    port: int | None = None
    can_block: bool = False
    id: int | None = None

    @property
    def name(self) -> str:
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class MeterReadingSeries:
    name: str
    unit: str | None = None


@dataclass(frozen=True)
class MeterDeviceConfig:
    """What a meter may report (its allowed series; empty = anything) and its clock's zone."""

    name: str
    timezone: str = "UTC"
    series: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeterDeviceType:
    """A meter model: how it is read (execution environment) and which register map it uses."""

    name: str
    execution_type: str
    meter_type: str | None = None


@dataclass(frozen=True, repr=False)
class MeterDevice:
    name: str
    url: str                                  # canonical, never with the password in it
    execution_type: str
    type_name: str
    config: MeterDeviceConfig
    interface: NetworkInterface | None = None
    meter_type: str | None = None
    is_active: bool = True
    id: int | None = None
    password: str | None = field(default=None, compare=False)
    # The platform's identifiers (v4): its UUID, owner, references, transformer ratios, and the
    # record exactly as its API exported it (JSON text), so an import loses no field.
    uuid: str | None = None
    organization: str | None = None
    external_system_reference: str | None = None
    manufacturer_serial: str | None = None
    ct_ratio: str | None = None               # decimal text; None = no current transformer
    vt_ratio: str | None = None               # decimal text; None = no voltage transformer
    platform_record: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return (f"MeterDevice(name={self.name!r}, url={self.url!r}, execution_type={self.execution_type!r}, "
                f"interface={self.interface.name if self.interface else None!r}, "
                f"password={'***' if self.password else None})")


@dataclass(frozen=True)
class AmrTask:
    """A call of an execution environment (`task_call` with `task_kwargs`) made on a schedule for
    every meter that has the task (directly or through a group)."""

    name: str
    schedule: str
    task_call: str
    meter_execution_type: str
    task_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    run_offset_seconds: float = 0.0
    is_active: bool = True
    id: int | None = None
    uuid: str | None = None                   # the platform's id of the task
    description: str | None = None


def default_uuid(kind: str, name: str) -> str:
    """A stable UUID for a meter or task imported without one (the same name gets the same id)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{kind}\x00{name}"))


@dataclass(frozen=True)
class AmrTaskGroup:
    name: str
    tasks: tuple[str, ...] = ()
    id: int | None = None


@dataclass(frozen=True)
class MeterReading:
    meter: str
    series: str
    timestamp: dt.datetime
    value: str                                # decimal string, never a float
    unit: str | None = None


@dataclass(frozen=True)
class StagedMeterReading:
    """A reading for a meter the registry does not know (yet); promoted when the meter is added."""

    meter: str
    series: str
    timestamp: dt.datetime
    value: str
    unit: str | None = None
    received_at: dt.datetime | None = None


@dataclass(frozen=True)
class MeterSystemEvent:
    """Something an operator should see about a meter; `id` makes a redelivered commit a no-op."""

    id: str
    meter: str
    title: str
    content: str = ""
    timestamp: dt.datetime | None = None


@dataclass(frozen=True)
class DispatchRound:
    """One firing of a schedule: how many jobs it created, for progress and ETA."""

    id: str
    schedule: str
    slot: dt.datetime
    jobs: int
    dispatched_at: dt.datetime
    dispatch_seconds: float = 0.0


@dataclass(frozen=True)
class AmrTaskRun:
    """The final outcome of one job (scheduled or on demand)."""

    job_id: str
    meter: str
    amr_task: str | None
    outcome: str                              # "pending", "done" or "failed"
    round_id: str | None = None
    error: str | None = None
    duration: float | None = None             # seconds spent polling (last attempt)
    attempts: int = 0
    finished_at: dt.datetime | None = None


@dataclass(frozen=True)
class Job:
    """What dispatch publishes for one (meter, AMR task) of a round."""

    id: str
    meter: str
    amr_task: str
    eta: dt.datetime


def round_id(schedule: str, slot: dt.datetime) -> str:
    return f"{schedule}@{iso_utc(slot)}"


def job_id(meter: str, amr_task: str, slot: dt.datetime) -> str:
    """Deterministic: the same (meter, task, slot) always names the same job."""
    return uuid5_text(f"job\x00{meter}\x00{amr_task}\x00{iso_utc(slot)}")


def event_id(*parts: object) -> str:
    return uuid5_text("event\x00" + "\x00".join(str(p) for p in parts))


_NAMESPACE_SHA1 = hashlib.sha1(ID_NAMESPACE.bytes)


def uuid5_text(name: str) -> str:
    """str(uuid.uuid5(ID_NAMESPACE, name)) without the UUID object: a dispatch names 10,000 jobs,
    and uuid5's int conversions and checks were most of a job id's cost (a test compares the two)."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(name.encode("utf-8"))
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_utc(moment: dt.datetime) -> str:
    """`2026-11-24T00:00:00Z` (microseconds only when present): the pipeline's text form of time."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if moment.year < 1000:  # strftime does not pad the year; isoformat does
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        return text + (f".{moment.microsecond:06d}" if moment.microsecond else "") + "Z"
    # isoformat (a third of strftime's cost) gives the fraction only when there is one, as here
    return moment.isoformat()[:-6] + "Z"


def parse_utc(text: str) -> dt.datetime:
    """ISO 8601 with Z or an offset; naive text is taken as UTC (what the platform sends)."""
    moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class MeterEntry:
    """One validated row of a meter list, ready for the store: the device, units of its series, and
    its groups and direct tasks (None = leave what the store has)."""

    device: MeterDevice
    units: dict[str, str | None] = field(default_factory=dict, hash=False)
    groups: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ImportSummary:
    meters_added: tuple[str, ...] = ()
    meters_updated: tuple[str, ...] = ()
    interfaces: int = 0
    amr_tasks: int = 0
    groups: int = 0
