"""This host's name as utilitarian records it (which host owns a SQLite store):
$UTILITARIAN_HOSTNAME when set (containers whose hostname changes on every start; tests that run
several "hosts" on one machine), else the kernel's host name."""

from __future__ import annotations

import os
import socket

ENV = "UTILITARIAN_HOSTNAME"


def host_name() -> str:
    return os.environ.get(ENV, "").strip() or socket.gethostname()
