"""`utilitarian simulate modbus|iec|lis200|fleet`: run simulated meters until stopped, optionally
writing the matching meter list for the registry (`--meters-out`, format in docs/meters.md).
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run simulated meters for tests, demos and benchmarks, in the foreground until SIGINT/SIGTERM
(or --duration seconds).

  modbus   Modbus TCP gateways on pymodbus's own server; many meters per port by device id
           (at most 247 per gateway); registers advance with time (energy grows, volts wobble).
           --rtu-over-tcp frames RTU over the TCP ports; --pty makes each gateway a serial line.
  iec      IEC 62056-21 mode C meters on TCP ports (meters sharing a port behave like an RS-485
           bus behind a transparent gateway) or on ptys (--pty: pyserial talks to a real tty; the
           simulator checks the line speed at each step: 300 baud for the request, the proposed
           speed after the ACK).
  lis200   Elster EK260-like volume converters (LIS-200): values, an hourly archive read in
           partial blocks, clock, supplier/customer locks (key = --password).
  fleet    all of the above at once.

Faults (rates are probabilities per answer, 0..1): --latency SECONDS per answer, --timeout-rate
(no answer), --garble-rate (random bytes), --disconnect-rate, --bad-bcc-rate, --nak-rate,
--exception-rate/--exception-code (Modbus). --meters-out FILE is written once every port is
listening, so its appearance means "ready".

Example:  utilitarian simulate modbus --meters 1000 --gateways 5 --latency 0.05 \\
              --meters-out /tmp/meters.toml
          utilitarian read "$(grep -m1 url /tmp/meters.toml | cut -d'"' -f2)"
"""


def _fault_args(p: argparse.ArgumentParser, *, modbus: bool, iec: bool) -> None:
    g = p.add_argument_group("latency and faults")
    g.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                   help="delay before every answer (default 0)")
    g.add_argument("--timeout-rate", type=float, default=0.0, metavar="P")
    g.add_argument("--garble-rate", type=float, default=0.0, metavar="P")
    g.add_argument("--disconnect-rate", type=float, default=0.0, metavar="P")
    if iec:
        g.add_argument("--bad-bcc-rate", type=float, default=0.0, metavar="P")
        g.add_argument("--nak-rate", type=float, default=0.0, metavar="P")
    if modbus:
        g.add_argument("--exception-rate", type=float, default=0.0, metavar="P")
        g.add_argument("--exception-code", type=int, default=4, metavar="CODE",
                       help="Modbus exception code for --exception-rate (default 4)")
    g.add_argument("--seed", type=int, default=0, help="random seed for fault dice (default 0)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0,
                   help="first TCP port; gateways use consecutive ports (default: ephemeral)")
    p.add_argument("--meters-out", metavar="FILE", help="write the meter list (TOML) here")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")


def register(sub, parent) -> None:
    p = sub.add_parser("simulate", parents=[parent], help="run simulated meters",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    m = kinds.add_parser("modbus", parents=[parent], help="Modbus TCP gateways with many meters")
    m.add_argument("--meters", type=int, default=10, help="number of meters (default 10)")
    m.add_argument("--gateways", type=int, default=1, help="gateway ports (default 1)")
    m.add_argument("--type", action="append", dest="types", metavar="METER_TYPE",
                   help="meter type, repeat to mix (default eastron_sdm630)")
    m.add_argument("--rtu-over-tcp", action="store_true", help="RTU framing instead of Modbus TCP")
    m.add_argument("--pty", action="store_true",
                   help="each gateway is a serial line (pty pair, RTU 9600 8N1) instead of a TCP port")
    m.add_argument("--unknown-device", choices=("gateway_error", "silent"), default="gateway_error",
                   help="answer to unknown device ids: exception 0x0B (default) or nothing")
    _common(m)
    _fault_args(m, modbus=True, iec=False)
    m.set_defaults(handler=run)

    for kind, what in (("iec", "IEC 62056-21 meters"), ("lis200", "LIS-200 volume converters")):
        i = kinds.add_parser(kind, parents=[parent], help=f"{what} on TCP or pty")
        i.add_argument("--meters", type=int, default=1, help="number of meters (default 1)")
        i.add_argument("--gateways", type=int, default=1,
                       help="TCP ports or ptys; meters sharing one form a bus (default 1)")
        i.add_argument("--pty", action="store_true", help="serve on ptys instead of TCP")
        i.add_argument("--password", help="62056-21 password / LIS-200 lock key of every meter")
        i.add_argument("--battery", action="store_true", help="meters need the NUL wake-up")
        i.add_argument("--timezone", default="UTC", help="meter clock time zone (default UTC)")
        _common(i)
        _fault_args(i, modbus=False, iec=True)
        i.set_defaults(handler=run)

    fl = kinds.add_parser("fleet", parents=[parent], help="Modbus, IEC and LIS-200 together (TCP)")
    fl.add_argument("--modbus", type=int, default=10, metavar="N")
    fl.add_argument("--modbus-gateways", type=int, default=1, metavar="N")
    fl.add_argument("--iec", type=int, default=2, metavar="N")
    fl.add_argument("--lis200", type=int, default=1, metavar="N")
    fl.add_argument("--password", help="password / lock key of the IEC and LIS-200 meters")
    fl.add_argument("--host", default="127.0.0.1")
    fl.add_argument("--meters-out", metavar="FILE")
    fl.add_argument("--duration", type=float, metavar="SECONDS")
    _fault_args(fl, modbus=True, iec=True)
    fl.set_defaults(handler=run)


def _faults(args):
    from utilitarian_sim import Faults
    return Faults(latency=args.latency, timeout=args.timeout_rate, garble=args.garble_rate,
                  disconnect=args.disconnect_rate, bad_bcc=getattr(args, "bad_bcc_rate", 0.0),
                  nak=getattr(args, "nak_rate", 0.0), exception=getattr(args, "exception_rate", 0.0),
                  exception_code=getattr(args, "exception_code", 4), seed=args.seed)


def _ports(args, count: int):
    return [args.port + i for i in range(count)] if getattr(args, "port", 0) else None


def _build(args):
    import utilitarian_sim as sim
    faults = _faults(args)
    if args.kind == "modbus":
        meters = sim.modbus_meters(args.meters, gateways=args.gateways,
                                   types=args.types or ["eastron_sdm630"], faults=faults)
        return sim.FleetSimulator(modbus=sim.ModbusFleetSimulator(
            meters, gateways=args.gateways, host=args.host, ports=_ports(args, args.gateways),
            unknown_device=args.unknown_device, transport="pty" if args.pty else "tcp",
            framer="rtu" if args.rtu_over_tcp else "socket"))
    if args.kind in ("iec", "lis200"):
        meters = sim.iec_meters(args.meters, gateways=args.gateways,
                                dialect="lis200" if args.kind == "lis200" else "iec",
                                password=args.password, battery=args.battery, faults=faults,
                                timezone=args.timezone)
        gateways = max(m.gateway for m in meters) + 1 if meters else 1
        server = sim.IecSimulator(meters, transport="pty" if args.pty else "tcp", host=args.host,
                                  ports=None if args.pty else _ports(args, gateways))
        return sim.FleetSimulator(**{args.kind: server})
    return sim.FleetSimulator(
        modbus=sim.ModbusFleetSimulator(sim.modbus_meters(args.modbus, gateways=args.modbus_gateways,
                                                          faults=faults),
                                        gateways=args.modbus_gateways, host=args.host),
        iec=sim.IecSimulator(sim.iec_meters(args.iec, password=args.password, faults=faults),
                             host=args.host) if args.iec else None,
        lis200=sim.IecSimulator(sim.iec_meters(args.lis200, dialect="lis200", password=args.password,
                                               faults=faults, first_address=20000001),
                                host=args.host) if args.lis200 else None)


def run(args) -> int:
    import signal
    import threading

    from utilitarian_sim import write_meter_list
    from utilitarian.commands.common import load
    from utilitarian.errors import UsageError

    load(args, process_name="simulate")
    try:
        fleet = _build(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop = threading.Event()

    def handle_signal(signum, frame):  # record only; the main thread acts
        stop.set()

    previous = {s: signal.signal(s, handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            fleet.start()
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"cannot start the simulator: {exc}") from None
        entries = fleet.meter_entries()
        interfaces = sorted({e["interface"] for e in entries})
        print(f"simulating {len(entries)} meters on {', '.join(interfaces)}", flush=True)
        if args.meters_out:
            write_meter_list(args.meters_out, entries,
                             comment="Meter list written by `utilitarian simulate`; format: docs/meters.md")
            print(f"meter list: {args.meters_out}", flush=True)
        stop.wait(args.duration)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        fleet.stop()
    return 0
