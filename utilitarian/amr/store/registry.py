"""The meter registry in the store: meters with their type, config, series and interface, AMR tasks
and groups, and the question dispatch asks: which (meter, task) pairs does a schedule have.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Iterable, Sequence

from utilitarian.amr.model import (AmrTask, AmrTaskGroup, ImportSummary, MeterDevice, MeterDeviceConfig,
                                   MeterEntry, NetworkInterface, default_uuid)

_METER_SELECT = """
SELECT m.id, m.name, m.url, m.execution_type, t.name, t.meter_type, m.is_active, m.password,
       c.id, c.name, c.timezone, i.id, i.host, i.port, i.can_block,
       m.uuid, m.organization, m.external_system_reference, m.manufacturer_serial, m.ct_ratio,
       m.vt_ratio, m.platform_record
FROM meter_device m
JOIN meter_device_type t ON t.id = m.type_id
JOIN meter_device_config c ON c.id = m.config_id
LEFT JOIN network_interface i ON i.id = m.interface_id
"""

_TASK_SELECT = """SELECT id, name, schedule, task_call, meter_execution_type, task_kwargs,
       run_offset_seconds, is_active, uuid, description FROM amr_task"""

_METER_COLUMNS = 22
# The poll's read leaves out the meter's platform record (NULL in its place): the platform's whole
# export of the meter as JSON text, a kilobyte or more that no poll reads, which SQLite would escape
# into the packed row and json.loads parse again on every poll.
_METER_AND_TASK_SELECT = (_METER_SELECT.replace("m.vt_ratio, m.platform_record", "m.vt_ratio, NULL")
                          .replace("\nFROM meter_device m", """, a.id, a.name, a.schedule, a.task_call,
       a.meter_execution_type, a.task_kwargs, a.run_offset_seconds, a.is_active, a.uuid, a.description
FROM meter_device m""") + "LEFT JOIN amr_task a ON a.name = ?\nWHERE m.name = ?")


def _packed(select: str) -> str:
    """The same row as one JSON array column (SQLite): Python's sqlite3 lets go of the GIL for
    every column it reads, and with a hundred poll threads waiting for it each let-go is a thread
    switch; one column is one switch instead of 32 (docs/benchmarks-amr.md, issue 16)."""
    head, rest = select.split("\nFROM ", 1)
    return head.replace("SELECT ", "SELECT json_array(", 1) + ")\nFROM " + rest


_METER_AND_TASK_PACKED = _packed(_METER_AND_TASK_SELECT)

# Every (meter, task) pair, direct or through a group; UNION removes a pair reachable both ways.
_LINKS = """SELECT meter_id, task_id FROM meter_device_task
            UNION SELECT mg.meter_id, gt.task_id FROM meter_device_group mg
                  JOIN amr_task_group_task gt ON gt.group_id = mg.group_id"""


def _uuid_text(text: str) -> str | None:
    """Canonical lower-case UUID text, or None if `text` is not a UUID."""
    import uuid

    try:
        return str(uuid.UUID(str(text).strip()))
    except ValueError:
        return None


def _chunks(items: Sequence, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# The objects built from registry rows, by the row: every poll reads its meter and task from the
# store, and a row read again unchanged (the task of every job of a round, the meter's next round)
# gives the same object without parsing it again; a changed row is a new key, so nothing here can
# go stale. Bounded: cleared when full (a registry larger than this builds some objects twice).
_ROWS_KEPT = 20_000
_task_rows: dict[tuple, AmrTask] = {}   # AmrTask by task row (shared: callers copy its kwargs)
_part_rows: dict[tuple, object] = {}    # a meter's shared parts (config, interface) by row part


def _kept(kept: dict, key: tuple, build):
    """The object `build` makes for `key`, one per distinct key while `kept` holds it."""
    value = kept.get(key)
    if value is None:
        if len(kept) >= _ROWS_KEPT:
            kept.clear()
        value = kept[key] = build()
    return value


class RegistryStore:
    """Mixin of Store: `self.backend` is the connection pool."""

    backend = None

    # --- reading the registry ------------------------------------------------------------------
    def _meter_from_row(self, row, series: tuple[str, ...]) -> MeterDevice:
        (mid, name, url, execution_type, type_name, meter_type, active, password,
         _cid, cname, tz, iid, host, port, can_block, muuid, org, ref, serial, ct, vt, record) = row
        interface = None
        if iid is not None:
            interface = _kept(_part_rows, ("interface", iid, host, port, can_block),
                              lambda: NetworkInterface(host, port or None, bool(can_block), iid))
        config = _kept(_part_rows, ("config", cname, tz, series), lambda: MeterDeviceConfig(cname, tz, series))
        return MeterDevice(name=name, url=url, execution_type=execution_type, type_name=type_name,
                           config=config, interface=interface,
                           meter_type=meter_type, is_active=bool(active), id=mid, password=password,
                           uuid=muuid, organization=org, external_system_reference=ref,
                           manufacturer_serial=serial, ct_ratio=ct, vt_ratio=vt, platform_record=record)

    def _series_of_configs(self, tx, config_ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
        out: dict[int, list[str]] = {}
        ids = sorted(set(config_ids))
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for cid, name in tx.all(f"SELECT cs.config_id, s.name FROM meter_device_config_series cs "
                                    f"JOIN meter_reading_series s ON s.id = cs.series_id "
                                    f"WHERE cs.config_id IN ({marks}) ORDER BY s.name", chunk):
                out.setdefault(cid, []).append(name)
        return {cid: tuple(names) for cid, names in out.items()}

    def get_meter(self, name: str) -> MeterDevice | None:
        with self.backend.transaction() as tx:
            row = tx.one(_METER_SELECT + " WHERE m.name = ?", (name,))
            if row is None:
                return None
            series = self._series_of_configs(tx, [row[8]]).get(row[8], ())
        return self._meter_from_row(row, series)

    def lookup_job(self, meter: str, amr_task: str | None) -> tuple[MeterDevice | None, AmrTask | None]:
        """What a poll needs, in one short read: the meter (without its series list, and for a
        scheduled job without its platform record) and its task.
        `meter` is its name or its UUID (the platform's invoke body names meters by UUID)."""
        if amr_task:
            # The common case, a scheduled job by meter name, in one statement (every poll asks).
            if self.backend.dialect == "sqlite":
                packed = self.backend.read_one(_METER_AND_TASK_PACKED, (amr_task, meter))
                row = tuple(json.loads(packed[0])) if packed is not None else None
            else:
                row = self.backend.read_one(_METER_AND_TASK_SELECT, (amr_task, meter))
            if row is not None:
                meter_row, task = row[:_METER_COLUMNS], row[_METER_COLUMNS:]
                return (self._meter_from_row(meter_row, ()),
                        _kept(_task_rows, task, lambda: self._task_from_row(task)) if task[0] is not None else None)
        with self.backend.transaction() as tx:
            row = tx.one(_METER_SELECT + " WHERE m.name = ?", (meter,))
            if row is None and (key := _uuid_text(meter)) is not None:
                row = tx.one(_METER_SELECT + " WHERE m.uuid = ?", (key,))
            task = tx.one(_TASK_SELECT + " WHERE name = ?", (amr_task,)) if amr_task else None
        return (self._meter_from_row(row, ()) if row else None), (self._task_from_row(task) if task else None)

    def list_meters(self) -> list[MeterDevice]:
        with self.backend.transaction() as tx:
            rows = tx.all(_METER_SELECT + " ORDER BY m.name")
            series = self._series_of_configs(tx, [r[8] for r in rows])
        return [self._meter_from_row(r, series.get(r[8], ())) for r in rows]

    def meter_tasks(self) -> dict[str, list[str]]:
        """Meter name -> names of its AMR tasks (direct or through groups)."""
        with self.backend.transaction() as tx:
            rows = tx.all(f"SELECT m.name, t.name FROM ({_LINKS}) l JOIN meter_device m ON m.id = l.meter_id "
                          "JOIN amr_task t ON t.id = l.task_id ORDER BY m.name, t.name")
        out: dict[str, list[str]] = {}
        for meter, task in rows:
            out.setdefault(meter, []).append(task)
        return out

    def meter_groups(self) -> dict[str, list[str]]:
        """Meter name -> names of the AMR task groups it is in."""
        with self.backend.transaction() as tx:
            rows = tx.all("SELECT m.name, g.name FROM meter_device_group mg JOIN meter_device m ON m.id = mg.meter_id "
                          "JOIN amr_task_group g ON g.id = mg.group_id ORDER BY m.name, g.name")
        out: dict[str, list[str]] = {}
        for meter, group in rows:
            out.setdefault(meter, []).append(group)
        return out

    def _task_from_row(self, row) -> AmrTask:
        tid, name, schedule, call, etype, kwargs, offset, active, tuuid, description = row
        return AmrTask(name=name, schedule=schedule, task_call=call, meter_execution_type=etype,
                       task_kwargs=json.loads(kwargs or "{}"), run_offset_seconds=float(offset),
                       is_active=bool(active), id=tid, uuid=tuuid, description=description)

    def list_amr_tasks(self) -> list[AmrTask]:
        with self.backend.transaction() as tx:
            rows = tx.all(_TASK_SELECT + " ORDER BY schedule, name")
        return [self._task_from_row(r) for r in rows]

    def list_groups(self) -> list[AmrTaskGroup]:
        with self.backend.transaction() as tx:
            groups = tx.all("SELECT id, name FROM amr_task_group ORDER BY name")
            links = tx.all("SELECT gt.group_id, t.name FROM amr_task_group_task gt "
                           "JOIN amr_task t ON t.id = gt.task_id ORDER BY t.name")
        tasks: dict[int, list[str]] = {}
        for gid, tname in links:
            tasks.setdefault(gid, []).append(tname)
        return [AmrTaskGroup(name, tuple(tasks.get(gid, ())), gid) for gid, name in groups]

    def jobs_for_schedule(self, schedule: str) -> list[tuple[str, str, float]]:
        """(meter, AMR task, run offset) for every active task of `schedule` on every active meter
        that has it and whose execution type the task is written for.

        Ordered round-robin over network interfaces (the first job of every interface, then the
        second, ...; by name within each): the polls in flight at any moment are spread over the
        gateways instead of all queueing on the one whose meters sort first, and each gateway's
        pooled connections are reused all through the round.
        """
        with self.backend.transaction() as tx:
            rows = tx.all(
                "SELECT name, task, offset_s FROM (SELECT m.name AS name, t.name AS task, "
                "t.run_offset_seconds AS offset_s, row_number() OVER (PARTITION BY "
                "COALESCE(m.interface_id, -m.id) ORDER BY m.name, t.name) AS turn "
                f"FROM ({_LINKS}) l "
                "JOIN amr_task t ON t.id = l.task_id JOIN meter_device m ON m.id = l.meter_id "
                "WHERE t.schedule = ? AND t.is_active = ? AND m.is_active = ? "
                "AND m.execution_type = t.meter_execution_type) j ORDER BY turn, name, task",
                (schedule, True, True))
        return [(m, t, float(o)) for m, t, o in rows]

    # --- changing the registry -----------------------------------------------------------------
    def add_amr_task(self, task: AmrTask) -> None:
        with self.backend.transaction(write=True) as tx:
            self._upsert_tasks(tx, [task])

    def _upsert_tasks(self, tx, tasks: Sequence[AmrTask]) -> None:
        tx.executemany(
            "INSERT INTO amr_task (name, schedule, run_offset_seconds, meter_execution_type, task_call, "
            "task_kwargs, is_active, uuid, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "schedule = excluded.schedule, run_offset_seconds = excluded.run_offset_seconds, "
            "meter_execution_type = excluded.meter_execution_type, task_call = excluded.task_call, "
            "task_kwargs = excluded.task_kwargs, is_active = excluded.is_active, uuid = excluded.uuid, "
            "description = excluded.description",
            [(t.name, t.schedule, float(t.run_offset_seconds), t.meter_execution_type, t.task_call,
              json.dumps(t.task_kwargs, sort_keys=True), bool(t.is_active),
              _uuid_text(t.uuid or "") or default_uuid("amr_task", t.name), t.description)
             for t in tasks])

    def _ids(self, tx, table: str, names: Iterable[str]) -> dict[str, int]:
        names = sorted(set(names))
        out: dict[str, int] = {}
        for chunk in _chunks(names):
            out.update({n: i for i, n in tx.all(
                f"SELECT id, name FROM {table} WHERE name IN ({','.join('?' * len(chunk))})", chunk)})
        return out

    def _ensure_named(self, tx, table: str, names: Iterable[str]) -> dict[str, int]:
        names = sorted(set(names))
        tx.executemany(f"INSERT INTO {table} (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                       [(n,) for n in names])
        return self._ids(tx, table, names)

    def attach_task(self, task: str, *, group: str | None = None, meters: Sequence[str] = ()) -> None:
        """Task into `group` (created if new); meters into `group`, or given the task directly."""
        with self.backend.transaction(write=True) as tx:
            task_id = tx.scalar("SELECT id FROM amr_task WHERE name = ?", (task,))
            if task_id is None:
                raise KeyError(f"no AMR task named {task!r}")
            meter_ids = self._ids(tx, "meter_device", meters)
            missing = sorted(set(meters) - set(meter_ids))
            if missing:
                raise KeyError(f"no meter named {', '.join(map(repr, missing[:5]))}")
            if group:
                gid = self._ensure_named(tx, "amr_task_group", [group])[group]
                tx.execute("INSERT INTO amr_task_group_task (group_id, task_id) VALUES (?, ?) "
                           "ON CONFLICT DO NOTHING", (gid, task_id))
                tx.executemany("INSERT INTO meter_device_group (meter_id, group_id) VALUES (?, ?) "
                               "ON CONFLICT DO NOTHING", [(mid, gid) for mid in meter_ids.values()])
            else:
                tx.executemany("INSERT INTO meter_device_task (meter_id, task_id) VALUES (?, ?) "
                               "ON CONFLICT DO NOTHING", [(mid, task_id) for mid in meter_ids.values()])

    def import_registry(self, entries: Sequence[MeterEntry], *, tasks: Sequence[AmrTask] = (),
                        groups: Sequence[AmrTaskGroup] = (),
                        now: dt.datetime | None = None) -> ImportSummary:
        """Write a validated meter list in one transaction: all of it or nothing."""
        now = now or dt.datetime.now(dt.timezone.utc)
        b = self.backend
        with b.transaction(write=True) as tx:
            self._upsert_tasks(tx, tasks)
            task_ids = self._ids(tx, "amr_task", [t for g in groups for t in g.tasks]
                                 + [t for e in entries for t in (e.tasks or ())])
            group_ids = self._ensure_named(tx, "amr_task_group", [g.name for g in groups]
                                           + [n for e in entries for n in (e.groups or ())])
            for g in groups:
                tx.execute("DELETE FROM amr_task_group_task WHERE group_id = ?", (group_ids[g.name],))
                tx.executemany("INSERT INTO amr_task_group_task (group_id, task_id) VALUES (?, ?)",
                               [(group_ids[g.name], task_ids[t]) for t in sorted(set(g.tasks))])
            devices = [e.device for e in entries]
            # interfaces
            ifaces = {(d.interface.host, d.interface.port or 0): d.interface.can_block
                      for d in devices if d.interface}
            tx.executemany("INSERT INTO network_interface (host, port, can_block) VALUES (?, ?, ?) "
                           "ON CONFLICT (host, port) DO UPDATE SET can_block = excluded.can_block",
                           [(h, p, bool(c)) for (h, p), c in sorted(ifaces.items())])
            iface_ids = {(h, p): i for i, h, p in tx.all("SELECT id, host, port FROM network_interface")}
            # series, with units where the list gives them
            units: dict[str, str | None] = {}
            for e in entries:
                for s in e.device.config.series:
                    units.setdefault(s, None)
                for s, u in e.units.items():
                    if u:
                        units[s] = u
            tx.executemany("INSERT INTO meter_reading_series (name, unit) VALUES (?, ?) ON CONFLICT (name) "
                           "DO UPDATE SET unit = COALESCE(excluded.unit, meter_reading_series.unit)",
                           sorted(units.items()))
            series_ids = self._ids(tx, "meter_reading_series", units)
            # configs: the series of a config named by several rows are their union
            configs: dict[str, tuple[str, set[str]]] = {}
            for d in devices:
                tz, names = configs.setdefault(d.config.name, (d.config.timezone, set()))
                names.update(d.config.series)
            tx.executemany("INSERT INTO meter_device_config (name, timezone) VALUES (?, ?) ON CONFLICT (name) "
                           "DO UPDATE SET timezone = excluded.timezone",
                           [(n, tz) for n, (tz, _) in sorted(configs.items())])
            config_ids = self._ids(tx, "meter_device_config", configs)
            for name, (_, names) in configs.items():
                tx.execute("DELETE FROM meter_device_config_series WHERE config_id = ?", (config_ids[name],))
                tx.executemany("INSERT INTO meter_device_config_series (config_id, series_id) VALUES (?, ?)",
                               [(config_ids[name], series_ids[s]) for s in sorted(names)])
            types = {d.type_name: (d.execution_type, d.meter_type) for d in devices}
            tx.executemany("INSERT INTO meter_device_type (name, execution_type, meter_type) VALUES (?, ?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET execution_type = excluded.execution_type, "
                           "meter_type = excluded.meter_type",
                           [(n, e, m) for n, (e, m) in sorted(types.items())])
            type_ids = self._ids(tx, "meter_device_type", types)
            existing = set(self._ids(tx, "meter_device", [d.name for d in devices]))
            tx.executemany(
                "INSERT INTO meter_device (name, url, execution_type, type_id, config_id, interface_id, "
                "password, is_active, created_at, uuid, organization, external_system_reference, "
                "manufacturer_serial, ct_ratio, vt_ratio, platform_record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET url = excluded.url, execution_type = excluded.execution_type, type_id = excluded.type_id, "
                "config_id = excluded.config_id, interface_id = excluded.interface_id, "
                "password = excluded.password, is_active = excluded.is_active, uuid = excluded.uuid, "
                "organization = excluded.organization, "
                "external_system_reference = excluded.external_system_reference, "
                "manufacturer_serial = excluded.manufacturer_serial, ct_ratio = excluded.ct_ratio, "
                "vt_ratio = excluded.vt_ratio, platform_record = excluded.platform_record",
                [(d.name, d.url, d.execution_type, type_ids[d.type_name], config_ids[d.config.name],
                  iface_ids[(d.interface.host, d.interface.port or 0)] if d.interface else None,
                  d.password, bool(d.is_active), b.ts(now),
                  _uuid_text(d.uuid or "") or default_uuid("meter", d.name), d.organization,
                  d.external_system_reference, d.manufacturer_serial, d.ct_ratio, d.vt_ratio,
                  d.platform_record) for d in devices])
            meter_ids = self._ids(tx, "meter_device", [d.name for d in devices])
            for e in entries:
                mid = meter_ids[e.device.name]
                if e.groups is not None:
                    tx.execute("DELETE FROM meter_device_group WHERE meter_id = ?", (mid,))
                    tx.executemany("INSERT INTO meter_device_group (meter_id, group_id) VALUES (?, ?)",
                                   [(mid, group_ids[g]) for g in sorted(set(e.groups))])
                if e.tasks is not None:
                    tx.execute("DELETE FROM meter_device_task WHERE meter_id = ?", (mid,))
                    tx.executemany("INSERT INTO meter_device_task (meter_id, task_id) VALUES (?, ?)",
                                   [(mid, task_ids[t]) for t in sorted(set(e.tasks))])
        names = [d.name for d in devices]
        return ImportSummary(meters_added=tuple(n for n in names if n not in existing),
                             meters_updated=tuple(n for n in names if n in existing),
                             interfaces=len(ifaces), amr_tasks=len(tasks), groups=len(groups))
