"""Fault injection shared by the simulators: per-request latency, fault rates and a deterministic script.

Rates are probabilities per response drawn from a seeded RNG; `script` names the faults of the first
responses in order (tests use it to say "the first answer has a wrong BCC, the second is fine").
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

# Which simulator honours which fault:
#   timeout     never answer this request (both)
#   garble      answer with random bytes instead of a frame (both)
#   disconnect  drop the connection instead of answering (both)
#   bad_bcc     wrong block check character (IEC)
#   missing_end readout data without the "!" end marker (IEC)
#   garbage     noise bytes before the identification "/" (IEC)
#   nak         answer a command with NAK (IEC)
#   exception   Modbus exception response, code `exception_code` (Modbus)
#   wrong_address  answer as another device (DLMS: another logical device / HDLC station; M-Bus:
#               another primary address)
#   collision   two slaves answer at once: their bytes overlap on the bus (M-Bus)
FAULT_NAMES = ("timeout", "garble", "disconnect", "bad_bcc", "missing_end", "garbage", "nak",
               "exception", "wrong_address", "collision")


@dataclass(frozen=True)
class Faults:
    """What can go wrong, and how slow answers are. All times are seconds."""

    latency: float = 0.0
    timeout: float = 0.0
    garble: float = 0.0
    disconnect: float = 0.0
    bad_bcc: float = 0.0
    missing_end: float = 0.0
    garbage: float = 0.0
    nak: float = 0.0
    exception: float = 0.0
    wrong_address: float = 0.0
    collision: float = 0.0
    exception_code: int = 4
    script: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError("latency must not be negative")
        for name in FAULT_NAMES:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {name} must be between 0 and 1")
        for name in self.script:
            if name not in FAULT_NAMES and name != "ok":
                raise ValueError(f"unknown fault {name!r} in script; known: ok, {', '.join(FAULT_NAMES)}")

    @property
    def active(self) -> bool:
        return bool(self.script) or any(getattr(self, n) > 0 for n in FAULT_NAMES)


class FaultInjector:
    """Thread-safe dice for one simulated meter: `pick()` returns the fault for the next answer."""

    def __init__(self, faults: Faults, *, seed_offset: int = 0):
        self.faults = faults
        self._rng = random.Random(faults.seed * 1_000_003 + seed_offset)
        self._script = list(faults.script)
        self._lock = threading.Lock()

    def pick(self, allowed: tuple[str, ...]) -> str | None:
        """The fault to apply to the next answer among `allowed`, or None.

        While a script is pending it alone decides: its head is consumed by the first call that
        allows it ("ok" by any call), and rates stay off until the script is used up, so tests
        are deterministic.
        """
        with self._lock:
            if self._script:
                head = self._script[0]
                if head == "ok" or head in allowed:
                    self._script.pop(0)
                    return None if head == "ok" else head
                return None
            for name in allowed:
                rate = getattr(self.faults, name)
                if rate and self._rng.random() < rate:
                    return name
            return None

    def noise(self, size: int, *, avoid: bytes = b"") -> bytes:
        """Random bytes, none of them in `avoid` (so noise cannot fake a frame start)."""
        with self._lock:
            out = bytearray()
            while len(out) < size:
                byte = self._rng.randrange(256)
                if byte not in avoid:
                    out.append(byte)
            return bytes(out)
