"""Meter protocols: IEC 62056-21 (mode C readout and programming mode), its LIS-200 dialect, and
Modbus through pymodbus. Every failure is a `utilitarian.amr.errors.MeterError` subclass."""
