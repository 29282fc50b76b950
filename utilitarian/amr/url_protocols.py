"""Our meter URL schemes, one UrlProtocol per protocol, registered through the
`utilitarian.read_schemes` entry points in pyproject.toml exactly as a site's protocol would be.
The parameter parsers of IEC 62056-21 and Modbus live in target.py (their targets have fields of
their own); DLMS and M-Bus parameters travel in MeterTarget.options.
"""

from __future__ import annotations

from utilitarian.amr.target import COMMON_PARAMS, _PARAMS, SerialSettings, UrlProtocol, _baud, _int_range


def _choice(*choices: str):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    return parse


def _obis_text(text: str) -> str:
    from utilitarian.amr.protocols.dlms_axdr import parse_obis
    parse_obis(text)
    return text


def _name(text: str) -> str:
    if not text or len(text) > 200 or any(ord(c) < 33 for c in text):
        raise ValueError("must be 1-200 printable characters without spaces")
    return text


def _secondary(text: str) -> str:
    """An M-Bus secondary address: 8 BCD digits of the identification number (F = wildcard),
    optionally followed by manufacturer (4 hex), version (2) and medium (2)."""
    if len(text) not in (8, 16) or any(c not in "0123456789ABCDEFabcdef" for c in text) \
            or any(c not in "0123456789Ff" for c in text[:8]):
        raise ValueError("must be 8 digits (F = any), optionally followed by 8 hex digits")
    return text.upper()


def _mbus_check(values: dict) -> str | None:
    if "address" not in values and "secondary" not in values:
        return "mbus needs address=PRIMARY (0-250) or secondary=ID"
    return None


IEC62056_21 = UrlProtocol("iec62056-21", {"iec62056-21+tcp": "tcp", "iec62056-21+serial": "serial"},
                          _PARAMS["iec62056-21"], "generic_iec6205621", serial=SerialSettings(300, 7, "E", 1))
LIS200 = UrlProtocol("lis200", {"lis200+tcp": "tcp", "lis200+serial": "serial"},
                     _PARAMS["lis200"], "generic_lis200", serial=SerialSettings(300, 7, "E", 1))
MODBUS = UrlProtocol("modbus", {"modbus+tcp": "tcp", "modbus+rtu": "serial", "modbus+rtu-over-tcp": "rtu-over-tcp"},
                     _PARAMS["modbus"], "generic_modbus", default_port=502, serial=SerialSettings(9600, 8, "N", 1))
DLMS = UrlProtocol(
    "dlms", {"dlms+tcp": "tcp", "dlms+serial": "serial"},
    {**COMMON_PARAMS, "baud": _baud, "client": _int_range(1, 127), "server": _int_range(0, 16383),
     "physical": _int_range(0, 16383), "security": _choice("none", "lls", "hls-gmac"),
     "keys": _name, "key_id": _name, "invocation_counter": _obis_text},
    "generic_dlms", default_port=4059, serial=SerialSettings(9600, 8, "N", 1),
    options=("client", "server", "physical", "security", "keys", "key_id", "invocation_counter"))
MBUS = UrlProtocol(
    "mbus", {"mbus+tcp": "tcp", "mbus+serial": "serial"},
    {**COMMON_PARAMS, "baud": _baud, "address": _int_range(0, 250), "secondary": _secondary,
     "max_telegrams": _int_range(1, 64), "retries": _int_range(0, 10)},
    "generic_mbus", serial=SerialSettings(2400, 8, "E", 1),
    options=("address", "secondary", "max_telegrams"), check=_mbus_check)

# Itron/Actaris Corus over I-FLAG: 8N1 at a fixed speed (no IEC baud switch); no addressing.
CORUS = UrlProtocol("corus", {"corus+tcp": "tcp", "corus+serial": "serial"},
                    {**COMMON_PARAMS, "baud": _baud, "retries": _int_range(0, 10)},
                    "generic_corus", serial=SerialSettings(9600, 8, "N", 1))
