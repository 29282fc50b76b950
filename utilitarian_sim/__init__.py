"""Simulated meters for tests, demos and benchmarks: Modbus TCP fleets on pymodbus's server,
IEC 62056-21 and LIS-200 meters and Corus gas volume converters over TCP or a pty, with latency
and fault injection.
A package of its own, outside the runtime's import path: workers never import it; only the
`simulate` and `demo` commands, the tests and the benchmarks do.

    from utilitarian_sim import ModbusFleetSimulator, SimModbusMeter
    with ModbusFleetSimulator([SimModbusMeter(1, "eastron_sdm630")]) as sim:
        url = sim.url(sim.meters[0])
"""

from utilitarian_sim.corus_engine import CorusSimulator
from utilitarian_sim.corus_meter import SimCorusMeter
from utilitarian_sim.faults import Faults
from utilitarian_sim.fleet import (FleetSimulator, iec_meters, modbus_meters, render_meter_list,
                                   write_meter_list)
from utilitarian_sim.iec_meter import SimIecMeter
from utilitarian_sim.iec_server import IecSimulator
from utilitarian_sim.modbus_sim import ModbusFleetSimulator, SimModbusMeter

__all__ = ["CorusSimulator", "SimCorusMeter", "Faults", "FleetSimulator", "IecSimulator", "ModbusFleetSimulator", "SimIecMeter",
           "SimModbusMeter", "iec_meters", "modbus_meters", "render_meter_list", "write_meter_list"]
