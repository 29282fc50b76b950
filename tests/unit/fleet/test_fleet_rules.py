"""The pure parts of fleet control: who a request targets, the roster's members (latest
announcement, goodbyes, forgetting), reports of silent members, and the client's checks that
refuse an unknown host, pool or queue before anything is sent."""

from __future__ import annotations

import pytest

from utilitarian.errors import UsageError
from utilitarian.fleet.inspect import Round, check_targets, reports_of
from utilitarian.fleet.protocol import Member, Request, known_members

W1 = Member("alpha@host1", "worker", "host1", "alpha", 10, "0.1.0")
B = Member("beat@host4", "beat", "host4", None, 11, "0.1.0")


def test_requests_target_by_host_member_and_kind():
    assert W1.targeted(Request.make("status")) and B.targeted(Request.make("status"))
    assert W1.targeted(Request.make("ping", host="host1")) and W1.targeted(Request.make("ping", host="alpha@host1"))
    assert not W1.targeted(Request.make("ping", host="host2"))
    assert not B.targeted(Request.make("grow", kinds=("worker",)))
    assert not W1.targeted(Request.make("grow", members=["beta@host2"]))


def test_a_request_round_trips_and_expires():
    r = Request.make("grow", {"pool": "main", "n": 2}, timeout=2.0, now=100.0)
    back = Request.decode(r.encode())
    assert back == r and not back.expired(101.9) and back.expired(102.1)
    assert Request.decode(b"not json") is None and Request.decode(b'{"cmd": "x"}') is None


def test_the_roster_keeps_the_latest_announcement_forgets_goodbyes_and_old_ones():
    ann = [{"event": "up", "member": "a", "at": 10}, {"event": "up", "member": "b", "at": 10},
           {"event": "down", "member": "b", "at": 20}, {"event": "up", "member": "c", "at": 10},
           {"event": "up", "member": "a", "at": 50}, {"garbage": 1}]
    members = known_members(ann, now=60.0, forget_after=45.0)
    assert set(members) == {"a"} and members["a"]["at"] == 50


def test_a_member_on_the_roster_that_does_not_answer_is_reported_silent():
    found = Round(replies=[{"member": "alpha@host1", "kind": "worker", "host": "host1", "ok": True,
                            "doc": {"pools": [{"name": "main", "queues": ["q"], "processes": 1, "threads": 2}],
                                    "children": [{"consuming": True, "inflight": 1}],
                                    "totals": {"done": 5, "failed": 1}}}],
                  announcements=[W1.announcement("up", 90.0), Member("x@host3", "worker", "host3").announcement(
                      "up", 95.0)])
    found.announcements = [__import__("json").loads(a) for a in found.announcements]
    reports = {r["member"]: r for r in reports_of(found, 100.0)}
    assert reports["x@host3"]["state"] == "silent" and "5s ago" in reports["x@host3"]["why"]
    a = reports["alpha@host1"]
    assert (a["state"], a["children"], a["in_flight"], a["processed"], a["failed"], a["consuming"]) == \
        ("answering", 1, 1, 6, 1, "yes")


REPORTS = [{"member": "alpha@host1", "kind": "worker", "host": "host1", "state": "answering",
            "pools": [{"name": "main", "queues": ["utilitarian.tasks.amr"]}]},
           {"member": "beta@host2", "kind": "worker", "host": "host2", "state": "answering",
            "pools": [{"name": "commits", "queues": ["utilitarian.tasks.commits"]}]},
           {"member": "beat@host4", "kind": "beat", "host": "host4", "state": "answering"}]


@pytest.mark.parametrize("cmd, args, host, error", [
    ("grow", {"pool": "nope", "n": 1}, None, "pool 'nope'"),
    ("grow", {"pool": "main", "n": 1}, "host9", "unknown host 'host9'"),
    ("grow", {"pool": "main", "n": 1}, "host2", "no answering worker on host2"),
    ("drain", {"queue": "cleanup"}, None, "consumes utilitarian.tasks.cleanup"),
    ("drain", {"queue": "bogus"}, None, "bogus"),
])
def test_commands_nobody_can_take_are_refused_before_sending(cmd, args, host, error):
    with pytest.raises(UsageError, match=error):
        check_targets(REPORTS, cmd, args, host)


def test_commands_go_only_to_workers_that_have_the_pool_or_queue():
    assert [r["member"] for r in check_targets(REPORTS, "grow", {"pool": "main", "n": 1}, None)] == ["alpha@host1"]
    assert [r["member"] for r in check_targets(REPORTS, "drain", {"queue": "commits"}, None)] == ["beta@host2"]
    assert len(check_targets(REPORTS, "ping", {}, None)) == 3


def test_the_first_running_child_in_the_masters_order_is_on_duty():
    from utilitarian.fleet.agent import child_on_duty

    status = {"children": [{"pid": 11, "state": "starting"}, {"pid": 12, "state": "draining"},
                           {"pid": 13, "state": "running", "consuming": False}, {"pid": 14, "state": "running"}]}
    assert child_on_duty(status) == 13  # running, though not consuming (its queues drained)
    assert child_on_duty({"children": [{"pid": 11, "state": "starting"}]}) is None
    assert child_on_duty({}) is None


def test_a_workers_control_queue_is_its_own_and_its_masters():
    from utilitarian.fleet.agent import control_queue

    a = control_queue(Member("alpha@h1", "worker", "h1", "alpha", 100))
    assert a.startswith("utilitarian.control.") and "alpha@h1" in a
    assert a != control_queue(Member("alpha@h1", "worker", "h1", "alpha", 101))  # a restarted master
    assert a != control_queue(Member("alpha@h1", "worker", "h2", "alpha", 100))  # a namesake elsewhere
