"""Property tests of the new time parsers: LIS-200 time values (with the DST flag) and the placing
of meter-local times at UTC instants; arbitrary input ends in a value or a typed error."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import assume, given, settings, strategies as st

from utilitarian.amr.errors import MeterProtocolError
from utilitarian.amr.protocols.lis200 import parse_lis_local
from utilitarian.amr.protocols.local_time import LocalStamp, place_ascending

TZ = ZoneInfo("Europe/Stockholm")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789-,:SWx ", max_size=25))
def test_lis_time_values(text):
    try:
        stamp = parse_lis_local(text)
    except MeterProtocolError:
        return
    assert stamp.dst in (None, True, False)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31)),
       st.integers(min_value=1, max_value=200), st.sampled_from([15, 60]))
def test_a_true_series_rendered_in_local_time_is_placed_back_exactly(start, count, minutes):
    # What a meter does: rows at true instants, stamped in local time without a flag.
    first = start.replace(tzinfo=timezone.utc, second=0, microsecond=0)
    instants = [first + timedelta(minutes=minutes * i) for i in range(count)]
    stamps = [LocalStamp(i.astimezone(TZ).replace(tzinfo=None)) for i in instants]
    # The known limit: a series that starts inside the second pass of the repeated hour has
    # nothing before it to tell, and without a DST flag it is placed at the first pass.
    assume(instants[0].astimezone(TZ).fold == 0 or
           instants[0].astimezone(TZ).replace(fold=0).astimezone(timezone.utc) == instants[0])
    assert place_ascending(stamps, TZ) == instants
