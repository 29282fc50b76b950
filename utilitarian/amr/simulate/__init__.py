"""Simulated meters for tests, demos and benchmarks: Modbus TCP fleets on pymodbus's server,
IEC 62056-21 and LIS-200 meters over TCP or a pty, with latency and fault injection.

    from utilitarian.amr.simulate import ModbusFleetSimulator, SimModbusMeter
    with ModbusFleetSimulator([SimModbusMeter(1, "eastron_sdm630")]) as sim:
        url = sim.url(sim.meters[0])
"""

from utilitarian.amr.simulate.faults import Faults
from utilitarian.amr.simulate.fleet import (FleetSimulator, iec_meters, modbus_meters,
                                            render_meter_list, write_meter_list)
from utilitarian.amr.simulate.iec_meter import SimIecMeter
from utilitarian.amr.simulate.iec_server import IecSimulator
from utilitarian.amr.simulate.modbus_sim import ModbusFleetSimulator, SimModbusMeter

__all__ = ["Faults", "FleetSimulator", "IecSimulator", "ModbusFleetSimulator", "SimIecMeter",
           "SimModbusMeter", "iec_meters", "modbus_meters", "render_meter_list", "write_meter_list"]
