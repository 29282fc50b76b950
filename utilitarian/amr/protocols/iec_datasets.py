"""IEC 62056-21 data sets: `address(value*unit)(value*unit)...` lines into DataSet values.

Addresses are kept exactly as the meter reports them (`1.8.0`, `1-0:1.8.0*255`, `C.1.0`, `F.F`);
values stay text, with `.number` giving the Decimal string when the text is numeric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.readings import parse_number

# The standard allows 16/32/16 characters; real meters stretch address and value a little.
MAX_ADDRESS, MAX_VALUE, MAX_UNIT = 32, 128, 16


@dataclass(frozen=True)
class DataValue:
    raw: str
    unit: str | None = None

    @property
    def number(self) -> str | None:
        """Decimal string ("00012.340" -> "12.340") or None for non-numeric text (dates, ids)."""
        return parse_number(self.raw)


@dataclass(frozen=True)
class DataSet:
    """One address with its values; address is "" for value-only lines (R1 answers, archive rows)."""

    address: str
    values: tuple[DataValue, ...]

    @property
    def value(self) -> DataValue:
        return self.values[0]


# Bytes a data block may hold: printable ASCII, CR and LF. `translate` deletes them in C; whatever is
# left is what the per-character check used to find (a Python loop was a third of a readout's CPU).
_ALLOWED = bytes(range(32, 127)) + b"\r\n"

# One data set as the line parser accepts it, when its address has no blanks: address (no "(", ")",
# "!", "/"), then values "(value)" or "(value*unit)" within the length bounds, then the line end or
# the next data set. Lines this does not cover exactly go through parse_data_line, which accepts
# the same and more (blanks around addresses) and names the fault of anything else.
_VALUE = r"\(([^()*\n]{0,%d})(?:\*([^()*\n]{0,%d}))?\)" % (MAX_VALUE, MAX_UNIT)
_MORE_VALUES = r"((?:\([^()*\n]{0,%d}(?:\*[^()*\n]{0,%d})?\))*)" % (MAX_VALUE, MAX_UNIT)
_DATA_SET = re.compile(r"([^()!/ \n]{0,%d})" % MAX_ADDRESS + _VALUE + _MORE_VALUES + r"(\n?)")


def _decode(payload: bytes) -> str:
    bad = payload.translate(None, _ALLOWED)
    if bad:
        if max(bad) > 127:
            raise MeterProtocolError("data block contains non-ASCII bytes")
        raise MeterProtocolError(f"data block contains control character {bad[0]:#04x}")
    return payload.decode("ascii")


def _parse_value(content: str, line_no: int) -> DataValue:
    value, star, unit = content.partition("*")
    if len(value) > MAX_VALUE:
        raise MeterProtocolError(f"line {line_no}: value longer than {MAX_VALUE} characters")
    if star and ("*" in unit or len(unit) > MAX_UNIT):
        raise MeterProtocolError(f"line {line_no}: malformed unit {unit[:20]!r}")
    return DataValue(value, unit or None)


def parse_data_line(line: str, line_no: int = 1) -> list[DataSet]:
    """Data sets of one line (without its CRLF)."""
    sets: list[DataSet] = []
    pos, length = 0, len(line)
    while pos < length:
        open_at = line.find("(", pos)
        if open_at < 0:
            raise MeterProtocolError(f"line {line_no}: {line[pos:pos + 20]!r} has no '(value)'")
        address = line[pos:open_at].strip()
        if len(address) > MAX_ADDRESS or any(c in ")!/" for c in address):
            raise MeterProtocolError(f"line {line_no}: malformed address {address[:40]!r}")
        values: list[DataValue] = []
        pos = open_at
        while pos < length and line[pos] == "(":
            close_at = line.find(")", pos + 1)
            if close_at < 0:
                raise MeterProtocolError(f"line {line_no}: '(' without ')'")
            content = line[pos + 1:close_at]
            if "(" in content:
                raise MeterProtocolError(f"line {line_no}: nested '('")
            values.append(_parse_value(content, line_no))
            pos = close_at + 1
        sets.append(DataSet(address, tuple(values)))
    return sets


def _more_values(text: str) -> list[DataValue]:
    """The values after the first, `(v*u)(v)...`, already matched by _DATA_SET."""
    if not text:
        return []
    values = []
    for content in text[1:-1].split(")("):
        value, _star, unit = content.partition("*")
        values.append(DataValue(value, unit or None))
    return values


def _fast_lines(text: str) -> list[list[DataSet]] | None:
    """Data sets by line when every line is covered by _DATA_SET back to back, else None."""
    lines: list[list[DataSet]] = []
    current: list[DataSet] = []
    pos = 0
    for match in _DATA_SET.finditer(text):
        if match.start() != pos:
            return None
        address, value, unit, more, line_end = match.groups()
        first = DataValue(value, unit or None)
        current.append(DataSet(address, (first, *_more_values(more)) if more else (first,)))
        if line_end:
            lines.append(current)
            current = []
        pos = match.end()
    if pos != len(text):
        return None
    if current:
        lines.append(current)
    return lines


def parse_data_lines(payload: bytes) -> list[list[DataSet]]:
    """Data sets grouped by line (archive rows need the grouping); empty lines are skipped."""
    text = _decode(payload).replace("\r\n", "\n").replace("\r", "\n")
    fast = _fast_lines(text)
    if fast is not None:
        return fast
    lines: list[list[DataSet]] = []
    for line_no, line in enumerate(text.split("\n"), 1):
        if line.strip():
            lines.append(parse_data_line(line, line_no))
    return lines


def parse_data_block(payload: bytes) -> tuple[DataSet, ...]:
    """All data sets of a data block, in order."""
    return tuple(s for line in parse_data_lines(payload) for s in line)


def parse_readout(payload: bytes) -> tuple[DataSet, ...]:
    """A readout data message's content: data lines ending with "!" CRLF (the end marker)."""
    body = payload.rstrip(b"\r\n")
    if not body.endswith(b"!"):
        raise MeterProtocolError("data message has no '!' end marker")
    return parse_data_block(body[:-1])
