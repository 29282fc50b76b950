"""Several hosts, one store. A SQLite store belongs to the host that first worked with it and
refuses any other (pointing to PostgreSQL); two workers as two "hosts" (own host names via
$UTILITARIAN_HOSTNAME, own worker names, runtime and state dirs) and a beat share one PostgreSQL
store and the three-node cluster, and a round of 2,000 simulated Modbus meters is read exactly once.

Limits of the evidence: the two "hosts" are processes on one machine with different host names
and directories; what differs between real machines beyond that (clocks, networks) is not shown."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys

from support.amr_harness import create_pg_database, drop_pg_database, render_meter_list
from support.cluster import write_config
from support.procs import REPO, Proc, wait_for
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology

UTC = dt.timezone.utc
SERIES = ["active_energy_import", "active_energy_export"]  # adjacent registers: one request per poll


@contextlib.contextmanager
def running(simulator, *, timeout: float):
    simulator.start(timeout=timeout)
    try:
        yield simulator
    finally:
        simulator.stop()


def cli(config, *args: str, host: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UTILITARIAN_HOSTNAME": host}
    env.pop("UTILITARIAN_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "utilitarian", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)


def test_a_sqlite_store_refuses_a_second_host(tmp_path):
    # Given a SQLite store a process of host-a worked with
    config = tmp_path / "u.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "amr.sqlite3"}"\n[beat]\nbuiltin_schedules = false\n')
    assert cli(config, "db", "migrate", host="host-a").returncode == 0
    first = cli(config, "meters", "list", host="host-a")
    assert first.returncode == 0, first.stderr
    assert "host-a (owner since" in cli(config, "db", "status", host="host-a").stdout
    # When a process of another host opens it, it is refused: exit 78, the owner, the way out
    other = cli(config, "meters", "list", host="host-b")
    assert other.returncode == 78
    assert "'host-a'" in other.stderr and "'host-b'" in other.stderr and "PostgreSQL" in other.stderr
    assert "database.url" in other.stderr and "Traceback" not in other.stderr
    # and the owner keeps working
    assert cli(config, "meters", "list", host="host-a").returncode == 0
    # When the store moved to host-b for good, host-b claims it and host-a is refused
    claimed = cli(config, "db", "claim-host", host="host-b")
    assert claimed.returncode == 0 and "(was 'host-a')" in claimed.stdout
    assert cli(config, "meters", "list", host="host-b").returncode == 0
    assert cli(config, "meters", "list", host="host-a").returncode == 78


def test_two_hosts_and_a_beat_read_a_round_of_2000_meters_exactly_once(tmp_path, cluster, cluster_vhost, figures):
    from utilitarian.amr.meter_types import load_builtin_meter_types
    from utilitarian.amr.model import AmrTask, AmrTaskGroup
    from utilitarian.amr.progress import round_progress
    from utilitarian.amr.registry_import import Known, known_execution_types, load_meter_list
    from utilitarian.amr.store import open_store
    from utilitarian.supervisor.control import discover, query
    from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

    db_url, db_name = create_pg_database()
    url = cluster.url(cluster_vhost)
    declare_topology(settings_from_url(url, queue_type="quorum"))
    meters = [SimModbusMeter(device_id=i % 200 + 1, meter_type="eastron_sdm120", gateway=i // 200,
                             name=f"m-{i:04d}") for i in range(2000)]
    procs: list[Proc] = []
    try:
        with running(ModbusFleetSimulator(meters), timeout=120) as sim:  # 2,000 devices: slow under load
            # Given 2,000 meters in one PostgreSQL store, read each quarter hour
            meter_file = tmp_path / "meters.toml"
            meter_file.write_text(render_meter_list(sim.meter_entries()))
            listed = load_meter_list(str(meter_file), Known(meter_types=load_builtin_meter_types(),
                                                            execution_types=known_execution_types()))
            entries = [e.__class__(e.device, e.units, ("q",), None) for e in listed.entries]
            with open_store(db_url) as store:
                store.migrate()
                store.import_registry(entries, tasks=[AmrTask("read-q", "quarterly", "read_values",
                                                              "generic_modbus", {"series": SERIES})],
                                      groups=[AmrTaskGroup("q", ("read-q",))])
            # and a beat whose schedule fires the quarterly round once, a little from now
            slot = (dt.datetime.now(UTC) + dt.timedelta(seconds=25)).replace(microsecond=0)
            schedule = (f'[schedule.round]\ncron = "{slot.minute} {slot.hour} * * * {slot.second}"\n'
                        'task = "amr.dispatch_schedule"\nkwargs = { schedule = "quarterly" }\nqueue = "amr"\n'
                        'slot_kwarg = "slot"\n')
            hosts = ["host-a", "host-b"]
            configs = {h: write_config(tmp_path / f"{h}.toml", url, f'[database]\nurl = "{db_url}"\n{schedule}',
                                       name=h) for h in hosts}
            # When two hosts each run a worker (all 14 queues) and host-a runs the beat
            for h in hosts:
                procs.append(Proc(["worker", "--config", str(configs[h]), "-n", f"amr@{h}", "-c", "1",
                                   "--threads", "40"], env={"UTILITARIAN_HOSTNAME": h},
                                  log=tmp_path / f"worker-{h}.log"))
            procs.append(Proc(["beat", "--config", str(configs["host-a"])], env={"UTILITARIAN_HOSTNAME": "host-a"},
                              log=tmp_path / "beat.log"))
            with open_store(db_url) as store:
                def finished():
                    return [p for p in round_progress(store) if p.jobs and p.pending == 0]
                done = wait_for(finished, timeout=240, interval=0.5, what="the round to finish")
                [rnd] = done
                runs = store.list_runs(rnd.round_id)

                def stored():
                    found = [r for r in store.iter_readings() if r.timestamp == rnd.slot]
                    return found if len(found) >= 2000 * len(SERIES) else None
                readings = wait_for(stored, timeout=120, interval=0.5, what="every reading to be stored")
            requests = {(d.meter.gateway, d.meter.device_id): d.requests for d in sim._devices.values()}
            worked = {}
            for h in hosts:
                [doc] = [query(path) for path in discover(str(tmp_path / h / "run"))]
                worked[h] = doc["totals"]["done"]
        # Then every meter was read exactly once, each reading stored once, and both hosts worked
        assert (rnd.jobs, rnd.done, rnd.failed) == (2000, 2000, 0)
        assert sorted(r.meter for r in runs) == sorted(m.name for m in meters)
        assert {r.outcome for r in runs} == {"done"}
        assert len(readings) == 2000 * len(SERIES)
        assert len({(r.meter, r.series) for r in readings}) == 2000 * len(SERIES)
        # A meter is asked once per attempt of its job: twice only after a poll that timed out
        # and was retried (a loaded CI machine), never by two hosts running the same job.
        attempts = {(m.gateway, m.device_id): 0 for m in meters}
        by_name = {m.name: (m.gateway, m.device_id) for m in meters}
        for r in runs:
            attempts[by_name[r.meter]] = r.attempts
        extra = {k: (n, attempts[k]) for k, n in requests.items() if not 1 <= n <= attempts[k]}
        assert len(requests) == 2000 and not extra, \
            f"meters read more often than their jobs were tried: {len(extra)}, e.g. {list(extra.items())[:5]}"
        assert all(n >= 200 for n in worked.values()), f"one host did (nearly) nothing: {worked}"
        figures.append(f"two hosts + beat, PostgreSQL store, cluster: round of {rnd.jobs} meters, each read once per "
                       f"attempt (requests per meter {sorted(set(requests.values()))}, jobs retried "
                       f"{sum(1 for n in attempts.values() if n > 1)}), tasks run per host {worked}, "
                       f"round took {rnd.elapsed_seconds or 0:.1f}s")
        for proc in procs:
            proc.signal(signal.SIGTERM)
        assert [p.wait(60) for p in procs] == [0, 0, 0], "\n".join(p.output()[-2000:] for p in procs)
    finally:
        for proc in procs:
            proc.kill_tree()
        drop_pg_database(db_name)
