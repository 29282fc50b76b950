"""A line setting the serial driver refuses (pyserial raises termios.error, which is not an
OSError) is MeterUnreachable, not an "unexpected error" with a traceback. Seen on this sandbox's
ptys when a client reopens a line at 2400 8E1 (M-Bus)."""

from __future__ import annotations

import termios

import pytest
import serial

from utilitarian.amr.errors import MeterUnreachable
from utilitarian.amr.protocols.transport import SerialTransport
from utilitarian.amr.target import SerialSettings


def test_termios_error_on_open_is_unreachable(monkeypatch):
    def refuse(*args, **kwargs):
        raise termios.error(22, "Invalid argument")

    monkeypatch.setattr(serial, "Serial", refuse)
    transport = SerialTransport("/dev/ttyM0", SerialSettings(2400, 8, "E", 1))
    with pytest.raises(MeterUnreachable, match="/dev/ttyM0: cannot open"):
        transport.open(1.0)
