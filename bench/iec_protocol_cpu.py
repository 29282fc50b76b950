"""Benchmark: CPU of the IEC 62056-21 protocol per poll, without sockets or a broker.

A mode C readout session runs against an in-memory line that answers like the simulator (or a
larger meter: --lines), so the figure is the protocol alone: request and option select built,
identification and data message extracted (BCC checked), data lines parsed, readings made.
`--chunk` splits the data message into TCP-sized pieces (a gateway at 9600 baud delivers a readout
in many small reads, which is where a parser that rescans its buffer pays).

`--url` runs the same sessions over TCP against a simulator in another process (start one with
`utilitarian simulate iec --port 40100`): this process's CPU then includes the sockets (connect,
sends, receives, close, and the kernel's loopback work charged to the sender), which is the rest of
what a poll costs in the protocol layer.

    .venv/bin/python bench/iec_protocol_cpu.py [--polls 5000] [--lines 12] [--chunk 4096]
    .venv/bin/python bench/iec_protocol_cpu.py --url 'iec62056-21+tcp://127.0.0.1:40100?address=10000001' --polls 300

`--parked N` runs the readout task call as a worker child runs it, against N simulated meters (one
per port, started here): every wait parked in one wait loop (supervisor/waits.py), resumed steps
on two step threads, N polls in flight. The figure is this process's CPU per poll: the protocol,
the sockets and the parking (no broker, no store): the part of a round's poll an IEC change moves.

    .venv/bin/python bench/iec_protocol_cpu.py --parked 200 --polls 4000 [--latency 0.05]

`--split DIR` reads the worker profile of a round instead (`bench/amr_round.py --protocol iec
--profile DIR`) and splits the IEC poll's share of the children's CPU: framing and parsing, the
sockets, and everything else. Shares, not absolute times: the profiler inflates Python calls more
than system calls.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from utilitarian.amr.environments.iec6205621 import datasets_to_result  # noqa: E402
from utilitarian.amr.protocols.iec62056_21 import Iec62056Session  # noqa: E402
from utilitarian.amr.target import parse_meter_url  # noqa: E402


def readout_message(lines: int) -> bytes:
    """A data message like the simulator's: ids, clock, error register, then energy registers."""
    rows = ["0.0.0(10000001)", "F.F(00000000)", "0.9.1(12:00:00)", "0.9.2(26-11-29)",
            "1.8.0(00012345.678*kWh)", "2.8.0(00000123.456*kWh)", "1.6.0(0001.234*kW)(23-01-05 12:15)"]
    n = 0
    while len(rows) < lines:
        n += 1
        rows.append(f"{n % 99}.8.{n % 5}(0001{n:03d}.123*kWh)")
    payload = ("\r\n".join(rows[:max(lines, 1)]) + "\r\n!\r\n").encode("ascii")
    body = payload + b"\x03"
    check = 0
    for byte in body:
        check ^= byte
    return b"\x02" + body + bytes([check])


class ScriptedLine:
    """An opened transport whose reads return the next scripted answer, in `chunk`-byte pieces."""

    can_switch_baud = False

    def __init__(self, message: bytes, chunk: int):
        self.answers = [b"/SIm5SIM62056\r\n"] + [message[i:i + chunk] for i in range(0, len(message), chunk)]
        self.pos = 0

    def open(self, timeout: float) -> None:
        self.pos = 0

    def close(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def read(self, timeout: float) -> bytes:
        answer = self.answers[self.pos]
        self.pos += 1
        return answer

    def drain(self) -> None:
        pass

    def set_baudrate(self, baudrate: int) -> None:
        pass


SPLIT = [  # (label, file suffix, function); cumulative CPU of each
    ("IEC session + readings (environment readout)", "environments/iec6205621.py", "readout"),
    ("  framing: identification, frames, BCC", "protocols/iec_frames.py", "extract_frame"),
    ("", "protocols/iec_frames.py", "__call__"),
    ("  readout parsing (data sets)", "protocols/iec_datasets.py", "parse_readout"),
    ("  readings from data sets", "environments/iec6205621.py", "datasets_to_result"),
    ("  sockets: connect", "protocols/transport.py", "open"),
    ("", "protocols/transport.py", "open_steps"),  # the stepwise connect (a poll run parked in the worker)
    ("  sockets: send", "protocols/transport.py", "write"),
    ("  sockets: receive", "protocols/transport.py", "read"),
    ("", "protocols/transport.py", "read_steps"),  # the stepwise read
    ("", "protocols/transport.py", "ask_steps"),  # a request sent by the wait loop, then its answer
    ("  sockets: close", "protocols/transport.py", "close"),
]


def split(directory: str) -> None:
    import glob
    import pstats

    stats = pstats.Stats(*glob.glob(f"{directory}/child-*.pstats"))
    found: dict[str, float] = {}
    label = ""
    for row_label, suffix, func in SPLIT:
        label = row_label or label
        for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
            if name == func and path.endswith(suffix):
                found[label] = found.get(label, 0.0) + ct
    total = stats.total_tt
    for row_label, _, _ in SPLIT:
        if row_label:
            print(f"{row_label:<48} {found.get(row_label, 0.0) / total:>6.1%}")
    session = found.get(SPLIT[0][0], 0.0)
    sockets = sum(v for k, v in found.items() if "sockets" in k)
    print(f"{'protocol without sockets':<48} {(session - sockets) / total:>6.1%}")
    print(f"{'everything outside the IEC session':<48} {1 - session / total:>6.1%}")


def start_meters(count: int, latency: float, work: pathlib.Path):
    """`utilitarian simulate iec` with `count` meters, one per port: the process and the URLs."""
    import subprocess
    import tomllib

    meters_file = work / "meters.toml"
    proc = subprocess.Popen([sys.executable, "-m", "utilitarian", "simulate", "iec", "--meters", str(count),
                             "--gateways", str(count), "--latency", str(latency), "--meters-out", str(meters_file),
                             "-l", "warning"], env={**os.environ, "UTILITARIAN_CONFIG": os.devnull},
                            stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not meters_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the simulator did not start")
        time.sleep(0.1)
    time.sleep(0.2)  # written before it is complete? the TOML parser would say so
    return proc, [m["url"] for m in tomllib.loads(meters_file.read_text())["meters"]]


class ParkedPolls:
    """Readouts run as a worker child runs stepwise tasks: first steps on the caller's thread,
    waits parked in a WaitLoop, resumed steps on `threads` step threads."""

    def __init__(self, threads: int = 2):
        import queue
        import threading

        from utilitarian.supervisor.waits import WaitLoop

        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.loop = WaitLoop(lambda gen, value: self.ready.put((gen, value)), name="bench-waits")
        self.loop.start()
        self.threads = [threading.Thread(target=self._steps, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def step(self, gen, value) -> None:
        while True:
            try:
                wait = gen.send(value)
            except StopIteration as stop:
                self.done.put(stop.value)
                return
            except Exception as exc:  # a failed poll counts as done: its error is the result
                self.done.put(exc)
                return
            value = self.loop.park(gen, wait)
            if value is None:
                return

    def _steps(self) -> None:
        while True:
            gen, value = self.ready.get()
            if gen is None:
                return
            self.step(gen, value)

    def stop(self) -> None:
        for _ in self.threads:
            self.ready.put((None, None))
        self.loop.stop()


def parked(args) -> None:
    import resource
    import tempfile

    from utilitarian.amr.environments import prepare_call, run_prepared_steps

    with tempfile.TemporaryDirectory() as work:
        sim, urls = start_meters(args.parked, args.latency, pathlib.Path(work))
        try:
            targets = [parse_meter_url(url + "&timeout=5") for url in urls]
            prepared = prepare_call("generic_iec6205621", "readout", {"addresses": ["1.8.0", "2.8.0"]})
            now = datetime.now(timezone.utc).replace(microsecond=0)
            polls = ParkedPolls()
            failed = readings = 0
            rounds = max(1, -(-args.polls // len(targets)))
            began = 0.0
            for number in range(rounds + 1):
                if number == 1:  # the first round imports and warms caches
                    began, began_wall, failed, readings = time.process_time(), time.monotonic(), 0, 0
                    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
                for target in targets:
                    polls.step(run_prepared_steps(prepared, target, now=now), None)
                for _ in targets:
                    result = polls.done.get(timeout=60)
                    if isinstance(result, Exception):
                        failed += 1
                    else:
                        readings += len(result.readings)
            spent, wall = time.process_time() - began, time.monotonic() - began_wall
            switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches
            polls.stop()
        finally:
            sim.terminate()
            sim.wait(10)
    n = rounds * len(targets)
    print(f"# IEC 62056-21 readouts parked, {len(targets)} in flight, {args.latency * 1e3:.0f} ms per answer; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"protocol + sockets + parking CPU per poll: {spent / n * 1e6:.0f} us ({n} polls in {wall:.1f} s, "
          f"{failed} failed, {readings / n:.1f} readings each; {switches / n:.1f} voluntary context switches)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=5000)
    parser.add_argument("--lines", type=int, default=12, help="data lines per readout (simulator: 12)")
    parser.add_argument("--chunk", type=int, default=4096, help="bytes per read of the data message")
    parser.add_argument("--url", help="poll this meter over TCP instead of the in-memory line")
    parser.add_argument("--split", metavar="DIR", help="split a round's worker profile instead")
    parser.add_argument("--parked", type=int, metavar="N", help="N simulated meters polled parked, at once")
    parser.add_argument("--latency", type=float, default=0.05, help="simulator delay per answer (--parked)")
    args = parser.parse_args()
    if args.split:
        split(args.split)
        return
    if args.parked:
        parked(args)
        return
    target = parse_meter_url(args.url or "iec62056-21+tcp://127.0.0.1:1?address=10000001")
    message = readout_message(args.lines)
    line = None if args.url else ScriptedLine(message, args.chunk)
    sleep = time.sleep if args.url else (lambda s: None)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    only = {"1.8.0", "2.8.0"}
    readings = 0
    began = 0.0
    for poll in range(args.polls + 1):
        if poll == 1:  # the first poll imports and warms caches: not part of a poll's cost
            began, readings = time.process_time(), 0
        with Iec62056Session(target, transport=line, sleep=sleep) as session:
            result = session.readout()
        readings += len(datasets_to_result(result.datasets, now, only).readings)
    spent = time.process_time() - began
    where = (f"over TCP from {args.url}" if args.url else
             f"{args.lines} data lines ({len(message)} bytes) in reads of {args.chunk} bytes")
    print(f"# IEC 62056-21 readout, {where}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'protocol + sockets' if args.url else 'protocol'} CPU per poll: {spent / args.polls * 1e6:.0f} us ({args.polls} polls, "
          f"{readings / args.polls:.1f} readings each)")


if __name__ == "__main__":
    main()
