"""Crash-and-fail harness: every step boundary of dispatch -> execute -> commit -> promote -> publish
(the `faultpoint(...)` calls in the runtime), under each fault kind in turn (a failed publish, a store
error, a SIGKILL of the worker child doing that step), on SQLite and on PostgreSQL, with a real
broker, real worker processes, Modbus and IEC 62056-21 simulators and a local webhook.

Invariant after each case (support/amr_faults.py, support/amr_fault_lane.py): the round finishes with no job pending; every
reading of the round and of the promotion is in the store exactly once; every one was published to
the exchange and POSTed to the webhook at least once; the fault fired and left a counted trace
(a retry or a child restart), nothing was dead-lettered, the broken meter's failure is an event.

Limits of the evidence: one fault per case, fired once (a fault repeated past a task's retries ends
in the dead-letter queue by design); the fleet is small (12 jobs a round) so that 2 x 51 cases run in
CI in a few minutes on two cores; a kill lands where the child is at that moment, which may be
another boundary's work too (that only widens what is covered). Set UTILITARIAN_FAULT_REPORT to a
path to keep the boundary x fault table.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.amr_fault_lane import Lane
from support.amr_faults import (BOUNDARIES, DIRECT_COMMIT_ONLY, KINDS, QUEUE_COMMIT_ONLY, FaultFleet, WebhookSink,
                                assign_cases, render_table, source_fault_points)

LANES_PER_BACKEND = 4
# The first half of each backend's lanes commit polls' results in the worker ([amr]
# commit_in_worker, the default), the rest through the commit queues: each boundary runs where the
# pipeline crosses it (support/amr_faults.py, QUEUE_COMMIT_ONLY and DIRECT_COMMIT_ONLY).
LANE_DIRECT = [n < LANES_PER_BACKEND // 2 for n in range(LANES_PER_BACKEND)]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_every_fault_point_in_the_source_has_its_cases():
    """A new step boundary (a new `faultpoint(...)` in the runtime) without a case fails here."""
    found = source_fault_points()
    assert set(found) == set(BOUNDARIES), (
        f"fault points without cases: {sorted(set(found) - set(BOUNDARIES))}; "
        f"cases without a fault point: {sorted(set(BOUNDARIES) - set(found))}")
    assert all(len(files) == 1 for files in found.values()), {k: v for k, v in found.items() if len(v) > 1}
    assert KINDS == ("publish", "store", "kill")
    assert QUEUE_COMMIT_ONLY | DIRECT_COMMIT_ONLY <= set(BOUNDARIES)


def test_every_case_goes_to_a_lane_whose_pipeline_crosses_its_boundary():
    cases = [(point, kind) for point in BOUNDARIES for kind in KINDS]
    shares = assign_cases(cases, LANE_DIRECT)
    assert sorted(c for share in shares for c in share) == sorted(cases)
    for direct, share in zip(LANE_DIRECT, shares):
        assert not {p for p, _ in share} & (QUEUE_COMMIT_ONLY if direct else DIRECT_COMMIT_ONLY)
    assert max(map(len, shares)) - min(map(len, shares)) <= len(KINDS)


def _postgres_available() -> bool:
    try:
        import psycopg

        from support.amr_harness import PG_ADMIN

        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def fleet():
    f = FaultFleet().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def sink():
    s = WebhookSink().start()
    yield s
    s.stop()


def test_every_boundary_under_every_fault_keeps_the_invariant(rabbit, tmp_path, fleet, sink):
    if not rabbit.has_ctl:
        pytest.fail("the harness needs rabbitmqctl for its vhosts", pytrace=False)
    backends = ["sqlite"]
    if _postgres_available():
        backends.append("postgresql")
    elif IN_CI:
        pytest.fail("no PostgreSQL for the fault harness (set UTILITARIAN_TEST_PG_URL)", pytrace=False)
    cases = [(point, kind) for point in BOUNDARIES for kind in KINDS]
    specs = [(f"{b[:2]}{n}", b) for b in backends for n in range(LANES_PER_BACKEND)]
    lanes: list[Lane] = []
    lock = threading.Lock()
    results, controls = [], {}
    clock = {"start": time.monotonic()}

    def run_lane(spec) -> list:
        # Given a lane of its own (vhost, store, worker), opened while the other lanes open
        index = int(spec[0][2:])
        lane = Lane(spec[0], spec[1], rabbit, fleet, sink, tmp_path / spec[0], commit_in_worker=LANE_DIRECT[index])
        with lock:
            lanes.append(lane)
        mine = assign_cases(cases, LANE_DIRECT)[index]
        # When the pipeline runs once without a fault, then once per boundary x fault of its share
        out = [lane.run_case(None, None)]
        out += [lane.run_case(point, kind) for point, kind in mine]
        controls[lane.name] = lane.negative_control()
        return out

    try:
        with ThreadPoolExecutor(len(specs)) as pool:
            for lane_results in pool.map(run_lane, specs):
                results += lane_results
        clock["cases run"] = time.monotonic()
    finally:
        with ThreadPoolExecutor(max(1, len(lanes))) as pool:
            list(pool.map(Lane.close, lanes))
        clock["lanes closed"] = time.monotonic()
    phases = ", ".join(f"{name} {at - clock['start']:.0f}s" for name, at in clock.items() if name != "start")
    table = render_table(results) + f"\n\n{len(results)} cases in {len(lanes)} lanes: {phases}"
    (tmp_path / "amr-faults.md").write_text(table + "\n")
    if os.environ.get("UTILITARIAN_FAULT_REPORT"):
        with open(os.environ["UTILITARIAN_FAULT_REPORT"], "w") as fh:
            fh.write(table + "\n")
    print("\n" + table)
    # Every boundary x fault ran on every backend, and the invariant held in each
    ran = {(r.point, r.kind, r.backend) for r in results if r.point}
    assert ran == {(p, k, b) for p, k in cases for b in backends}
    failed = [r for r in results if not r.ok]
    assert not failed, "\n" + table
    # and the checker is able to fail: a reading that was never committed is reported missing from
    # the store, the exchange and the webhook (negative control, per lane)
    for name, problems in controls.items():
        assert [p.split(":")[0] for p in problems] == ["stored", "exchange", "webhook"], (name, problems)
        assert all(" 1 " in p for p in problems), (name, problems)
