"""`utilitarian demo`: the whole pipeline on one machine in one command. Simulated Modbus,
IEC 62056-21, DLMS/COSEM and M-Bus meters, a worker and a beat (accelerated schedules) as real processes, SQLite in a
scratch directory, the local RabbitMQ; readings and round progress shown live; Ctrl-C stops it all.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from utilitarian.errors import EX_FAILURE, EX_OK, EX_UNAVAILABLE

DEMO_VHOST = "utilitarian-demo"
NO_BROKER = """\
No RabbitMQ answers at {where}. The demo needs one on this machine:
  Debian/Ubuntu:  sudo apt-get install rabbitmq-server   (it starts as a service)
  any system:     rabbitmq-server -detached              (if the server is installed)
  container:      docker run -d -p 5672:5672 rabbitmq:3
or point the demo elsewhere with --broker amqp://user:password@host:5672/"""


def register(sub, parent) -> None:
    p = sub.add_parser("demo", parents=[parent], help="simulated meters polled on schedule, shown live (Ctrl-C stops)")
    p.add_argument("--modbus", type=int, default=240, help="simulated Modbus meters (default 240)")
    p.add_argument("--iec", type=int, default=60, help="simulated IEC 62056-21 meters, two per bus (default 60)")
    p.add_argument("--dlms", type=int, default=4,
                   help="simulated DLMS/COSEM meters: TCP wrapper, every other one with HLS-GMAC (default 4)")
    p.add_argument("--mbus", type=int, default=6, help="simulated M-Bus heat and water meters, on one bus (default 6)")
    p.add_argument("--interval", type=int, default=15, choices=(10, 12, 15, 20, 30),
                   help="seconds between 'quarterly' rounds (default 15); 'hourly' rounds run every minute")
    p.add_argument("--latency", type=float, default=0.03, help="simulated answer delay in seconds (default 0.03)")
    p.add_argument("--broker", help="AMQP URL (default: the local RabbitMQ, guest/guest)")
    p.add_argument("--dir", help="working directory (default: a new temporary one, removed at the end)")
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    p.add_argument("--dashboard-port", type=int, default=8480,
                   help="port of the status page on 127.0.0.1 (default 8480, a free one if taken; -1: none)")
    p.set_defaults(handler=run)


def _broker_url(args) -> tuple[str, str | None]:
    """The URL to use and, when we could make one, the demo's own vhost (so purging is safe)."""
    base = args.broker or os.environ.get("UTILITARIAN_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    if args.broker or not shutil.which("rabbitmqctl"):
        return base, None
    made = subprocess.run(["rabbitmqctl", "-q", "add_vhost", DEMO_VHOST], capture_output=True, text=True, timeout=60)
    if made.returncode != 0 and "already exists" not in (made.stderr + made.stdout):
        return base, None
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", DEMO_VHOST, "guest", ".*", ".*", ".*"],
                   capture_output=True, timeout=60)
    return base.rstrip("/") + "/" + DEMO_VHOST, DEMO_VHOST


def _reachable(url: str) -> bool:
    import pika

    params = pika.URLParameters(url)
    params.socket_timeout = 3
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
        return True
    except Exception:  # any failure means "not usable": the message says what to do
        return False


def _config_text(workdir: str, broker_url: str, interval: int) -> str:
    return f"""# Written by `utilitarian demo`.
[broker]
url = "{broker_url}"
retry_backoff_max = 2.0

[database]
url = "sqlite:///{workdir}/demo.sqlite3"

[paths]
state_dir = "{workdir}/state"
runtime_dir = "{workdir}/run"

[beat]
builtin_schedules = false

# Accelerated: "quarterly" every {interval} s, "hourly" once a minute (at second 7, so the two
# never share a slot). Cron with a 6th field counts seconds.
[schedule.demo-quarterly]
cron = "* * * * * */{interval}"
task = "amr.dispatch_schedule"
kwargs = {{ schedule = "quarterly" }}
slot_kwarg = "slot"
misfire_grace = 5.0

[schedule.demo-hourly]
cron = "* * * * * 7"
task = "amr.dispatch_schedule"
kwargs = {{ schedule = "hourly" }}
slot_kwarg = "slot"
misfire_grace = 5.0

[tasks."amr.execute_meter_task"]
max_retries = 2
retry_backoff = 1.0

[amr]
interface_wait = 0.5
interface_defer = 1.0
"""


def _fleet(args):
    from utilitarian_sim.faults import Faults
    from utilitarian_sim.iec_meter import SimIecMeter
    from utilitarian_sim.iec_server import IecSimulator
    from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

    per_gateway = 120
    types = ("eastron_sdm630", "eastron_sdm120", "abb_b23")
    modbus = []
    for i in range(args.modbus):
        faults = Faults(latency=args.latency)
        if i % 97 == 13:  # a few meters that sometimes do not answer: retries, some "Poll failed" events
            faults = Faults(latency=args.latency, timeout=0.4, seed=i)
        modbus.append(SimModbusMeter(device_id=i % per_gateway + 1, meter_type=types[i % len(types)],
                                     gateway=i // per_gateway, faults=faults, name=f"modbus-{i + 1:04d}"))
    iec = [SimIecMeter(address=str(30000001 + i), gateway=i // 2, name=f"iec-{i + 1:04d}")
           for i in range(args.iec)]
    parts = []
    if modbus:
        parts.append(ModbusFleetSimulator(modbus))
    if iec:
        parts.append(IecSimulator(iec))
    parts.extend(_dlms_mbus(args))
    return parts


def _dlms_mbus(args) -> list:
    """DLMS meters (half of them secured: keys in files in the demo's directory) and an M-Bus bus."""
    from utilitarian_sim.dlms_meter import SimDlmsMeter
    from utilitarian_sim.dlms_server import DlmsSimulator
    from utilitarian_sim.faults import Faults
    from utilitarian_sim.mbus_sim import MbusSimulator, SimMbusMeter

    parts = []
    if args.dlms:
        parts.append(DlmsSimulator([SimDlmsMeter(name=f"dlms-{i + 1:04d}", security="hls-gmac" if i % 2 else "none",
                                                 faults=Faults(latency=args.latency))
                                    for i in range(args.dlms)]))
    if args.mbus:
        parts.append(MbusSimulator([SimMbusMeter(i + 1, f"{50000001 + i}", medium=4 if i % 2 == 0 else 7,
                                                 telegrams=2 if i % 3 == 0 else 1, name=f"mbus-{i + 1:04d}",
                                                 faults=Faults(latency=args.latency / 3))
                                    for i in range(args.mbus)]))
    return parts


def _rows(parts, workdir: str) -> list[dict]:
    from utilitarian_sim.dlms_server import DlmsSimulator

    rows = []
    for part in parts:
        if isinstance(part, DlmsSimulator):
            keys = {}
            for meter in part.meters:
                if meter.security != "none":
                    path = os.path.join(workdir, f"{meter.name}.keys")
                    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
                        fh.write(part.key_file_text(meter))
                    keys[meter.name] = path
            rows.extend(part.meter_entries(keys=keys))
        else:
            rows.extend(part.meter_entries())
    return rows


def _install(config, parts, workdir: str) -> tuple[int, int]:
    from utilitarian.amr.model import AmrTask, AmrTaskGroup
    from utilitarian.amr.registry_import import Known, check_meter_row, known_execution_types
    from utilitarian.amr.store import store_for_config
    from utilitarian.amr.meter_types import load_registered_meter_types

    rows = _rows(parts, workdir)
    for row in rows:
        if row["execution_type"] == "generic_modbus":
            row["url"] += "&timeout=1.0"
    tasks = [AmrTask("modbus-read", "quarterly", "read_values", "generic_modbus"),
             AmrTask("iec-readout", "quarterly", "readout", "generic_iec6205621"),
             AmrTask("modbus-energy", "hourly", "read_values", "generic_modbus",
                     {"series": ["active_energy_import"]}),
             AmrTask("dlms-registers", "quarterly", "read_registers", "generic_dlms",
                     {"registers": ["1-0:1.8.0", "1-0:2.8.0", "1-0:32.7.0", "1-0:31.7.0", "1-0:1.7.0"]}),
             AmrTask("dlms-profile", "hourly", "read_load_profile", "generic_dlms", {"offset_seconds": 3600.0}),
             AmrTask("mbus-read", "quarterly", "read_values", "generic_mbus")]
    groups = {"generic_modbus": ("modbus-read", "modbus-energy"), "generic_iec6205621": ("iec-readout",),
              "generic_dlms": ("dlms-registers", "dlms-profile"), "generic_mbus": ("mbus-read",)}
    known = Known(amr_tasks=frozenset(t.name for t in tasks), meter_types=load_registered_meter_types(),
                  execution_types=known_execution_types())
    entries = []
    for row in rows:
        row["groups"] = [row["execution_type"]]
        entry, errors = check_meter_row(row, known)
        if errors:
            raise RuntimeError(f"demo meter {row['name']}: {'; '.join(errors)}")
        entries.append(entry)
    with store_for_config(config, check=False) as store:
        store.migrate()
        store.import_registry(entries, tasks=tasks, groups=[AmrTaskGroup(k, v) for k, v in groups.items()])
        meters = store.list_meters()
    return len(meters), len(tasks)


class Processes:
    """Worker and beat in their own sessions: Ctrl-C reaches only us, and we stop them in order."""

    def __init__(self, workdir: str, config_path: str):
        self.workdir = workdir
        self.config_path = config_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = []

    def start(self, name: str, *args: str) -> None:
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "utilitarian", *args, "--config", self.config_path],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode} (see {self.workdir}/{name}.log)"
        return None

    def stop(self) -> list[str]:
        report = []
        for name in ("beat", "worker"):  # no new rounds first, then let the worker drain
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(10)
                report.append(f"{name} did not stop within 45 s and was killed")
            report.append(f"{name} stopped (exit {code})")
        for log in self.logs:
            log.close()
        return report


def _progress(store):
    from utilitarian.amr.progress import format_progress, round_progress

    rounds = list(reversed(round_progress(store, limit=4)))  # oldest first, like the readings
    return rounds, format_progress(rounds)


def _show(store, state: dict, now: float) -> None:
    from utilitarian.amr.model import iso_utc

    rows = store.tail_readings(limit=2000, after=state.get("last"))
    if rows:
        state["last"] = rows[-1][1]
        state["total"] = state.get("total", 0) + len(rows)
        for reading, _ in rows[-4:]:
            unit = f" {reading.unit}" if reading.unit else ""
            print(f"  {iso_utc(reading.timestamp)}  {reading.meter:<12} {reading.series:<24} {reading.value}{unit}")
        if len(rows) > 4:
            print(f"  ... {len(rows) - 4:,} more readings this second ({state['total']:,} so far)")
    events = store.list_events(limit=5)
    fresh = [e for e in events if e.id not in state.setdefault("events", set())]
    for e in reversed(fresh):
        state["events"].add(e.id)
        print(f"  ! {e.meter}: {e.title}: {e.content[:90]}")
    # One line per round when its count moved (at most every 3 s while running), and its final line once.
    printed = state.setdefault("rounds", {})
    for p, line in zip(*_progress(store)):
        count = p.done + p.failed
        last = printed.get(p.round_id)
        if last is not None and (last[0] == count or (not p.finished and now - last[1] < 3.0)):
            continue
        if last is None and p.finished and count == 0:
            continue
        printed[p.round_id] = (count, now)
        print(f"  round {line}")
    sys.stdout.flush()


def run(args) -> int:
    from utilitarian.amr.store import store_for_config
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.broker.topology import declare_topology
    from utilitarian.commands.common import load
    from utilitarian.config import load_config
    from utilitarian.log import mask_url, url_host

    load(args)  # logging as configured; the demo writes its own config below
    broker_url, vhost = _broker_url(args)
    if not _reachable(broker_url):
        print(NO_BROKER.format(where=url_host(broker_url)), file=sys.stderr)
        return EX_UNAVAILABLE
    workdir = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="utilitarian-demo-")
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "utilitarian.toml")
    with open(config_path, "w", encoding="utf-8") as fh:
        fh.write(_config_text(workdir, broker_url, args.interval))
    config = load_config(config_path)
    stop = {"requested": False}

    def request_stop(signum, _frame) -> None:  # only record; the loop below acts
        stop["requested"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    parts = _fleet(args)
    procs = Processes(workdir, config_path)
    started = []
    code = EX_OK
    dashboard = None
    try:
        settings = settings_from_config(config)
        declare_topology(settings)
        if vhost:
            _purge(settings)
        for part in parts:
            part.start()
            started.append(part)
        meters, tasks = _install(config, parts, workdir)
        print(f"demo in {workdir} (broker {mask_url(broker_url)}, SQLite)")
        print(f"{meters} simulated meters ({args.modbus} Modbus, {args.iec} IEC 62056-21 on two-meter buses, "
              f"{args.dlms} DLMS/COSEM, {args.mbus} M-Bus on one bus), "
              f"{tasks} AMR tasks; rounds every {args.interval} s and every minute. Ctrl-C stops.")
        procs.start("worker", "worker", "-c", "2", "--threads", "25")
        procs.start("beat", "beat")
        dashboard = _dashboard(config, args.dashboard_port)
        deadline = time.monotonic() + args.duration if args.duration else None
        state: dict = {}
        with store_for_config(config) as store:
            while not stop["requested"] and (deadline is None or time.monotonic() < deadline):
                problem = procs.check()
                if problem:
                    print(f"demo: {problem}", file=sys.stderr)
                    code = EX_FAILURE
                    break
                _show(store, state, time.monotonic())
                time.sleep(1.0)
        print("stopping: beat, then worker (in-flight polls finish), then the simulated meters ...")
    finally:
        if dashboard is not None:
            dashboard.stop()
        for line in procs.stop():
            print(f"  {line}")
        for part in reversed(started):
            part.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("demo stopped cleanly" if code == 0 else "demo stopped after an error")
    return code


def _dashboard(config, port: int):
    """The status page beside the terminal view (threads of this process), on localhost only."""
    from utilitarian.dashboard import server

    if port < 0:
        return None
    try:
        running = server.start(config, port=port)
    except OSError:  # the port is taken (another demo, a real dashboard): any free one will do
        running = server.start(config, port=0)
    print(f"status page: {running.url}  (open it in a browser beside this view)")
    return running


def _purge(settings) -> None:
    """Leftovers of an earlier demo in the demo's own vhost would poll meters that no longer exist."""
    from utilitarian import queues
    from utilitarian.broker import delay
    from utilitarian.broker.connection import connect_blocking

    conn = connect_blocking(settings, name="utilitarian demo")
    try:
        channel = conn.channel()
        waiting = [delay.level_queue(level) for level in range(delay.LEVELS)]
        for name in (*queues.QUEUES, queues.DEAD_LETTER, *waiting):
            channel.queue_purge(name)
    finally:
        conn.close()
