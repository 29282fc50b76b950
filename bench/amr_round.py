"""Benchmark: one daily AMR round of 10,000 simulated Modbus meters, end to end, side by side with
Celery in the same run.

The meters are `utilitarian simulate modbus` in a separate process (50 gateways that serve parallel
sessions, --latency per answer, one request per poll). Each system gets a fresh vhost and SQLite
store with the same registry, and is timed from the moment the round is dispatched:

  utilitarian  `utilitarian worker -c 2 --threads 100` (all 14 queues): amr.dispatch_schedule fans
               out 10,000 amr.execute_meter_task (pipelined confirms); each poll hands readings and
               its outcome to the commit queues, which the same worker stores.
  celery       `celery worker -P prefork -c 8` (the usual setup); the round is dispatched with
               send_task in a loop; each task polls with the same driver and writes readings and
               its outcome to the store itself.

Printed: dispatch time, round wall time (dispatch to last poll finished) against the ideal
(meters x latency / slots), readings committed per second, time until every reading was stored,
and peak RSS of each worker's process tree. Figures only; nothing is asserted.

    .venv/bin/python bench/amr_round.py [--meters 10000] [--latency 0.05] [--skip-celery]
    .venv/bin/python bench/amr_round.py --protocol iec --meters 2000 --gateways 2000 --skip-celery
    .venv/bin/python bench/amr_round.py --meters 4000 --skip-celery --profile /tmp/prof   # cProfile

Worker CPU is the process CPU time (user + system) of the whole worker tree, so "CPU/poll" holds
everything the worker spends per meter: dispatch, poll, commits and publishing; the table's column
counts from the worker's start (as issue 16 measured it), the goal line also from the dispatch on.
`--rounds N` dispatches N rounds one after the other to the same worker and prints each later
("warm") round's CPU per poll from its dispatch: a worker that has polled before, as a fleet's is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import subprocess
import sys
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]
SERIES = ["active_energy_import", "active_energy_export"]  # adjacent registers: one request per poll
IEC_SERIES = ["1.8.0", "2.8.0"]  # kept from each mode C readout (the whole readout is read and parsed)
UTC = dt.timezone.utc

# --- the Celery side (imported by `celery -A amr_round worker`) ---------------------------------
if os.environ.get("AMR_BENCH_CELERY"):
    from celery import Celery

    celery_app = Celery("amr_round", broker=os.environ["AMR_BENCH_BROKER"])
    celery_app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
    _store = {}

    def _store_here():
        from utilitarian.amr.store import open_store

        if os.getpid() not in _store:  # one per prefork child, opened after the fork
            _store[os.getpid()] = open_store(os.environ["AMR_BENCH_DB"], pool_size=1)
        return _store[os.getpid()]

    @celery_app.task(name="amr.execute_meter_task")
    def celery_execute(meter, amr_task, slot, round_id):
        import time as _time

        from utilitarian.amr.environments import run_task_call
        from utilitarian.amr.model import AmrTaskRun, MeterReading, parse_utc
        from utilitarian.amr.target import parse_meter_url

        started = _time.monotonic()
        store = _store_here()
        device, task = store.lookup_job(meter, amr_task)
        target = parse_meter_url(device.url, secret=device.password)
        result = run_task_call(task.meter_execution_type, task.task_call, target, task.task_kwargs,
                               now=parse_utc(slot))
        store.commit_readings([MeterReading(meter, r.series, r.timestamp, r.value, r.unit) for r in result.readings])
        store.record_runs([AmrTaskRun(celery_execute.request.id, meter, amr_task, "done", round_id,
                                      duration=_time.monotonic() - started, attempts=1)])


# --- shared measurement ---------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Peak RSS (MiB) of a process tree, sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.peak_parts: list[float] = []  # RSS (MiB) of each process at the peak, the root first
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds seen last (children exit before the end)
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                continue
            total = 0
            parts = []
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    total += rss
                    parts.append(rss / 2**20)
                    times = p.cpu_times()
                    self.cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            if total / 2**20 > self.peak:
                self.peak, self.peak_parts = total / 2**20, parts


def cpu_seconds(pids) -> float:
    """CPU seconds so far of these processes (the simulator, the broker) for the per-round share."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tree_usage(pid: int) -> tuple[float, float, int, int]:
    """User and system CPU seconds and voluntary and involuntary context switches so far of a
    process and its live descendants (every thread): the round's CPU split into Python work and
    the kernel's, and how often its threads went to sleep (GIL and socket waits) or were preempted."""
    import psutil
    from common import ctx_switches

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0, 0, 0
    user = system = 0.0
    voluntary = involuntary = 0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        user, system = user + t.user, system + t.system
        v, i = ctx_switches(f"/proc/{p.pid}/task/*/status")  # every thread's, not the main thread's alone
        voluntary, involuntary = voluntary + v, involuntary + i
    return user, system, voluntary, involuntary


def broker_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("beam")]


def start_simulator(args, work: pathlib.Path, attempts: int = 3) -> tuple[subprocess.Popen, pathlib.Path]:
    """The simulator gives itself 10 s to open its ports; on a machine loaded by other test runs it
    may need more than one try."""
    for attempt in range(attempts):
        try:
            return _start_simulator(args, work / f"sim-{attempt}")
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise RuntimeError("not reached")


def _start_simulator(args, work: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
    work.mkdir(parents=True, exist_ok=True)
    meters_file = work / "meters.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "utilitarian", "simulate", args.protocol, "--meters", str(args.meters), "--gateways",
         str(args.gateways), *(["--type", "eastron_sdm120"] if args.protocol == "modbus" else []),
         "--latency", str(args.latency), "--meters-out", str(meters_file), "-l", "warning"],
        env={**os.environ, "UTILITARIAN_CONFIG": os.devnull}, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not meters_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.1)
    return proc, meters_file


def series_of(protocol: str) -> list[str]:
    return SERIES if protocol == "modbus" else IEC_SERIES


def install(db_url: str, meters_file: pathlib.Path, protocol: str = "modbus") -> None:
    from utilitarian.amr.meter_types import load_builtin_meter_types
    from utilitarian.amr.model import AmrTask, AmrTaskGroup
    from utilitarian.amr.registry_import import Known, known_execution_types, load_meter_list
    from utilitarian.amr.store import open_store

    if protocol == "modbus":
        task = AmrTask("read-daily", "daily", "read_values", "generic_modbus", {"series": SERIES})
    else:
        task = AmrTask("read-daily", "daily", "readout", "generic_iec6205621", {"addresses": IEC_SERIES})
    meters = load_meter_list(str(meters_file), Known(meter_types=load_builtin_meter_types(),
                                                     execution_types=known_execution_types()))
    entries = [e.__class__(e.device, e.units, ("daily",), None) for e in meters.entries]
    with open_store(db_url) as store:
        store.migrate()
        store.import_registry(entries, tasks=[task], groups=[AmrTaskGroup("daily", ("read-daily",))])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_log(path: pathlib.Path, needle: str, count: int, timeout: float = 60.0) -> None:
    wait_until(lambda: path.exists() and path.read_text(errors="replace").count(needle) >= count, timeout,
               f"{count}x {needle!r} in {path.name}", 0.1)


def measure_store(db_url: str, n: int, t0: float, round_id: str | None, timeout: float,
                  series: list[str] = SERIES, stored_before: int = 0) -> dict:
    """Wait for n outcomes (of `round_id` when given) and n x len(SERIES) readings more than
    `stored_before`; times are seconds after t0 (wall clock)."""
    from utilitarian.amr.store import open_store

    where, params = ("round_id = ? AND ", (round_id,)) if round_id else ("", ())
    with open_store(db_url) as store:
        b = store.backend
        def outcomes():
            with b.transaction() as tx:
                return tx.scalar(f"SELECT count(*) FROM amr_task_run WHERE {where}outcome <> 'pending'", params,
                                 default=0) >= n
        wait_until(outcomes, timeout, "every poll to finish", 0.2)
        with b.transaction() as tx:  # a failed poll stores no readings
            done = tx.scalar(f"SELECT count(*) FROM amr_task_run WHERE {where}outcome = 'done'", params, default=0)
        wait_until(lambda: store.count_readings() - stored_before >= done * len(series), timeout,
                   "every reading", 0.2)
        since = (b.ts(dt.datetime.fromtimestamp(t0, UTC)),)
        with b.transaction() as tx:
            last_poll = b.from_ts(tx.scalar(f"SELECT max(finished_at) FROM amr_task_run WHERE {where}1=1", params))
            first_c = b.from_ts(tx.scalar("SELECT min(committed_at) FROM meter_reading WHERE committed_at >= ?", since))
            last_c = b.from_ts(tx.scalar("SELECT max(committed_at) FROM meter_reading WHERE committed_at >= ?", since))
            failed = tx.scalar(f"SELECT count(*) FROM amr_task_run WHERE {where}outcome = 'failed'", params,
                               default=0)
        rnd = store.get_round(round_id) if round_id else None
    readings = max(1, done * len(series))
    return {"round": last_poll.timestamp() - t0, "stored": last_c.timestamp() - t0,
            "commit_rate": readings / max(1e-3, (last_c - first_c).total_seconds()), "failed": failed,
            "dispatch": rnd.dispatch_seconds if rnd else None}


# --- IEC 62056-21 (--protocol iec) ------------------------------------------------------------------
IEC_REACTION = 0.02  # the simulator's meters answer 20 ms after a request ("SIm": lower-case third letter)


def iec_notes(args, answers: int, slots: int) -> list[str]:
    """What the ideal leaves out for IEC: the standard's reaction times (the meter waits tr before
    each of its answers, the client before its option select), and on shared gateways the bus, which
    carries one session at a time (can_block), so its meters are polled one after the other."""
    per_poll = answers * args.latency + (answers + 1) * IEC_REACTION
    per_gateway = -(-args.meters // max(args.gateways, 1))
    floor = max(args.meters * per_poll / slots, per_gateway * per_poll)
    kind = ("one meter per port (IP modems)" if per_gateway == 1 else
            f"{per_gateway} meters per port (RS-485 buses behind transparent gateways, one session at a time)")
    return [f"# IEC: {kind}; a poll takes at least {per_poll * 1e3:.0f} ms on the line "
            f"({answers} answers + {answers + 1} reaction times of {IEC_REACTION * 1e3:.0f} ms); "
            f"round floor with those: {floor:.1f}s"]


def iec_protocol_alone(args) -> float:
    """CPU seconds per poll of the IEC readout on its own, as a worker child runs it (parked waits,
    step threads) against its own simulated meters, no broker and no store: what the round's poll
    spends inside the protocol, to take from it for the goal's "everything outside the protocol"."""
    import re

    out = subprocess.run([sys.executable, str(BENCH / "iec_protocol_cpu.py"), "--parked", "200", "--polls", "3000",
                          "--latency", str(args.latency)], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"CPU per poll: (\d+) us", out).group(1)) / 1e6


# --- the two systems --------------------------------------------------------------------------------
def run_ours(args, meters_file: pathlib.Path) -> dict:
    from common import tmpdir, url_for, vhost

    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.config import load_config

    work = tmpdir()
    db_url = f"sqlite:///{work / 'amr.sqlite3'}"
    install(db_url, meters_file, args.protocol)
    with vhost("bench-amr") as v:
        config_path = work / "utilitarian.toml"
        config_path.write_text(f'[broker]\nurl = "{url_for(v)}"\n[database]\nurl = "{db_url}"\n'
                               f'[paths]\nstate_dir = "{work / "state"}"\nruntime_dir = "{work / "run"}"\n'
                               '[beat]\nbuiltin_schedules = false\n[amr]\nstore_pool_size = 16\n')
        config = load_config(str(config_path))
        declare_topology(settings_from_config(config))
        log = work / "worker.log"
        command = ([sys.executable, str(BENCH / "profile_worker.py")] if args.profile
                   else [sys.executable, "-m", "utilitarian"])
        env = {**os.environ, "BENCH_PROFILE_DIR": args.profile or ""}
        worker = subprocess.Popen([*command, "worker", "--config", str(config_path),
                                   "-c", str(args.processes), "--threads", str(args.threads), "-l", "info"],
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                                  env=env)
        rss = RssSampler(worker.pid)
        try:
            wait_log(log, "consuming (boot", args.processes)
            rss.start()
            rounds = []
            for _ in range(args.rounds):  # the first round is cold (each child's first poll imports the driver)
                rounds.append(one_round(args, config, db_url, worker.pid))
            result = rounds[0]
            result["warm"], result["rounds"] = rounds[1:], len(rounds)
        finally:
            rss.stop.set()
            from common import stop

            stop(worker)
    result["rss"] = rss.peak
    result["rss_parts"] = rss.peak_parts
    result["cpu"] = sum(rss.cpu.values())
    result["dispatch_alone"] = dispatch_alone(work, db_url)
    return result


def one_round(args, config, db_url: str, worker_pid: int) -> dict:
    """Dispatch a daily round and wait until its last reading is stored."""
    from utilitarian.amr.store import open_store
    from utilitarian.app import App

    with open_store(db_url) as store:
        stored_before = store.count_readings()
    app = App(config, name="bench dispatch")
    time.sleep(max(0.0, 1.0 - time.time() % 1.0))  # a new second: each round its own slot and id
    slot = dt.datetime.now(UTC).replace(microsecond=0)
    before = (cpu_seconds([args.sim_pid]), cpu_seconds(broker_pids()))
    usage_before = tree_usage(worker_pid)  # start-up (imports, connecting) excluded
    t0 = time.time()
    app.send_task("amr.dispatch_schedule", kwargs={"schedule": "daily", "slot": slot.isoformat()})
    app.close()
    round_id = f"daily@{slot.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    result = measure_store(db_url, args.meters, t0, round_id, timeout=600, series=series_of(args.protocol),
                           stored_before=stored_before)
    result["sim_cpu"] = cpu_seconds([args.sim_pid]) - before[0]
    result["broker_cpu"] = cpu_seconds(broker_pids()) - before[1]
    result["usage"] = [b - a for a, b in zip(usage_before, tree_usage(worker_pid))]
    result["round_cpu"] = result["usage"][0] + result["usage"][1]  # user + system
    return result


def dispatch_alone(work: pathlib.Path, db_url: str) -> float:
    """The same fan-out with nothing else running: amr.dispatch_schedule called in this process
    against a vhost without consumers (the round above shares the CPU with the polls it starts)."""
    from common import url_for, vhost

    from utilitarian.amr.tasks import dispatch_schedule
    from utilitarian.app import App
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.config import parse_config
    from utilitarian.tasks import Registry, TaskContext

    with vhost("bench-amr-dispatch") as v:
        config = parse_config({"broker": {"url": url_for(v)}, "database": {"url": db_url},
                               "beat": {"builtin_schedules": False}})
        declare_topology(settings_from_config(config))
        app = App(config, registry=Registry.for_config(config), name="bench dispatch alone")
        try:
            app.send_task("utilitarian.ping")  # the publisher's connection is not part of the fan-out
            ctx = TaskContext(id="bench-dispatch", name="amr.dispatch_schedule", retries=0, queue="", app=app)
            slot = (dt.datetime.now(UTC) - dt.timedelta(hours=1)).replace(microsecond=0).isoformat()  # due now
            began = time.monotonic()
            dispatch_schedule(ctx, "daily", slot)
            return time.monotonic() - began
        finally:
            app.close()


def run_celery(args, meters_file: pathlib.Path) -> dict:
    from common import stop, tmpdir, url_for, vhost

    work = tmpdir()
    db_url = f"sqlite:///{work / 'amr.sqlite3'}"
    install(db_url, meters_file)
    queue = "utilitarian.tasks.amr.scheduled.daily"
    with vhost("bench-amr-celery") as v:
        env = {**os.environ, "AMR_BENCH_CELERY": "1", "AMR_BENCH_BROKER": url_for(v), "AMR_BENCH_DB": db_url,
               "PYTHONPATH": f"{BENCH}{os.pathsep}{REPO}"}
        log = work / "celery.log"
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "amr_round", "worker", "-P", "prefork",
                                   "-c", str(args.celery_concurrency), "-Q", queue, "--without-gossip",
                                   "--without-mingle", "--without-heartbeat", "-l", "info"],
                                  env=env, cwd=BENCH, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        rss = RssSampler(worker.pid)
        try:
            wait_log(log, "ready.", 1)
            rss.start()
            os.environ.update({"AMR_BENCH_CELERY": "1", "AMR_BENCH_BROKER": url_for(v)})
            from celery import Celery

            producer = Celery("dispatch", broker=url_for(v))
            producer.conf.update(task_serializer="json")
            from utilitarian.amr.store import open_store

            with open_store(db_url) as store:
                pairs = store.jobs_for_schedule("daily")
            slot = dt.datetime.now(UTC).replace(microsecond=0)
            before = (cpu_seconds([args.sim_pid]), cpu_seconds(broker_pids()))
            t0 = time.time()
            began = time.monotonic()
            with producer.connection_for_write() as conn:
                for meter, task, _ in pairs:  # a Celery dispatch task: one send_task per job
                    producer.send_task("amr.execute_meter_task", kwargs={
                        "meter": meter, "amr_task": task, "slot": slot.isoformat(),
                        "round_id": "celery"}, queue=queue, connection=conn)
            dispatch = time.monotonic() - began
            result = measure_store(db_url, args.meters, t0, None, timeout=900)
            result["dispatch"] = dispatch
            result["sim_cpu"] = cpu_seconds([args.sim_pid]) - before[0]
            result["broker_cpu"] = cpu_seconds(broker_pids()) - before[1]
        finally:
            rss.stop.set()
            stop(worker)
    result["rss"] = rss.peak
    result["cpu"] = sum(rss.cpu.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--celery-concurrency", type=int, default=8)
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--protocol", choices=("modbus", "iec"), default="modbus")
    parser.add_argument("--answers", type=int, default=None,
                        help="answers per poll for the ideal (default: 1 for Modbus, 2 for an IEC readout)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds one after the other on the same "
                        "worker; the later ones are printed as warm rounds (a worker that has polled before)")
    parser.add_argument("--profile", metavar="DIR", help="run the worker's children under cProfile "
                        "(bench/profile_worker.py); summarise with profile_worker.py --summary DIR")
    args = parser.parse_args()
    from common import stop, tmpdir

    sim, meters_file = start_simulator(args, tmpdir())
    args.sim_pid = sim.pid
    if args.protocol == "iec":
        args.skip_celery = True  # the Celery side of this script polls Modbus only
    answers = args.answers or (1 if args.protocol == "modbus" else 2)
    slots = args.processes * args.threads
    ideal = args.meters * args.latency * answers / slots
    print(f"# daily round: {args.meters:,} {'Modbus' if args.protocol == 'modbus' else 'IEC 62056-21'} meters, {args.latency * 1000:.0f} ms per answer, "
          f"{args.gateways} gateways; {os.cpu_count()} CPUs")
    print(f"# command: {' '.join([os.path.relpath(sys.executable, REPO), 'bench/amr_round.py', *sys.argv[1:]])}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.protocol == "iec":
        print("\n".join(iec_notes(args, answers, slots)))
    rows = []
    try:
        ours = run_ours(args, meters_file)
        rows.append((f"utilitarian -c {args.processes} --threads {args.threads}", ours, ideal))
        if not args.skip_celery:
            celery = run_celery(args, meters_file)
            c_ideal = args.meters * args.latency * answers / args.celery_concurrency
            rows.append((f"celery -P prefork -c {args.celery_concurrency}", celery, c_ideal))
    finally:
        stop(sim)
    protocol_alone = iec_protocol_alone(args) if args.protocol == "iec" and rows else None
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'system':<34} {'dispatch':>9} {'round':>8} {'ideal':>7} {'x ideal':>8} {'stored':>8} "
          f"{'commits/s':>10} {'failed':>7} {'peak RSS':>9} {'CPU worker':>10} {'CPU/poll':>9} {'sim':>5} {'broker':>6}")
    for name, r, ideal_s in rows:
        print(f"{name:<34} {r['dispatch']:>8.2f}s {r['round']:>7.1f}s {ideal_s:>6.1f}s {r['round'] / ideal_s:>7.1f}x "
              f"{r['stored']:>7.1f}s {r['commit_rate']:>10,.0f} {r['failed']:>7} {r['rss']:>7.0f} MiB "
              f"{r['cpu']:>9.1f}s {r['cpu'] / (args.meters * r.get('rounds', 1)) * 1e3:>6.3f} ms "
              f"{r['sim_cpu']:>4.1f}s {r['broker_cpu']:>5.1f}s")
    if rows:
        ours = rows[0][1]
        budget = 2 * ideal + ours["dispatch"]
        print(f"# utilitarian dispatch of {args.meters:,} jobs with nothing else running: "
              f"{ours['dispatch_alone']:.2f}s")
        print(f"# goal: round <= 2 x ideal + dispatch = {budget:.1f}s: round {ours['round']:.1f}s = "
              f"{ours['round'] / budget:.2f} of it ({(ours['round'] - ours['dispatch']) / ideal:.2f}x ideal after "
              f"dispatch); worker CPU per poll {ours['cpu'] / (args.meters * args.rounds) * 1e3:.3f} ms with start-up, "
              f"{ours['round_cpu'] / args.meters * 1e3:.3f} ms from dispatch to the last reading stored "
              f"(goal <= 0.45 ms); "
              f"peak RSS {ours['rss']:.0f} MiB (goal <= 150 MiB: "
              f"{' + '.join(f'{x:.0f}' for x in ours.get('rss_parts', []))})")
        user, system, voluntary, involuntary = (x / args.meters for x in ours["usage"])
        print(f"# per poll from the dispatch on: user {user * 1e3:.3f} ms, system {system * 1e3:.3f} ms; context "
              f"switches {voluntary:.1f} voluntary, {involuntary:.2f} involuntary (whole worker tree)")
        for k, warm in enumerate(ours["warm"], 2):
            user, system, voluntary, _ = (x / args.meters for x in warm["usage"])
            print(f"# warm round {k}: round {warm['round']:.1f}s = {warm['round'] / budget:.2f} of 2 x ideal + "
                  f"dispatch, dispatch {warm['dispatch']:.2f}s, failed {warm['failed']}; worker CPU per poll "
                  f"{warm['round_cpu'] / args.meters * 1e3:.3f} ms from the dispatch (user {user * 1e3:.3f}, "
                  f"system {system * 1e3:.3f}; {voluntary:.1f} voluntary switches)")
        if protocol_alone is not None:
            from common import median

            whole = median([r["round_cpu"] / args.meters for r in ours["warm"] or [ours]])
            which = "median of the warm rounds" if ours["warm"] else "from the dispatch"
            print(f"# outside the IEC protocol: {whole * 1e3:.3f} ms per poll ({which}) "
                  f"- {protocol_alone * 1e3:.3f} ms for the protocol alone (its session, sockets and waits; "
                  f"bench/iec_protocol_cpu.py --parked) = {(whole - protocol_alone) * 1e3:.3f} ms (goal <= 0.45 ms)")
        if len(rows) > 1:
            print(f"# round vs celery: {rows[1][1]['round'] / ours['round']:.1f}x faster")


if __name__ == "__main__":
    main()
