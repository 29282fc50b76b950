"""What operators see: `status --json` per child (state, ready, consuming or why not, reconnects,
cancels) and restarts by cause; the metrics text; heartbeats of older children without the new
fields; counters that survive the child that counted them."""

from __future__ import annotations

import signal

from utilitarian.supervisor import events as ev
from utilitarian.supervisor.plan import PoolSpec
from utilitarian.supervisor.report import metrics_text, status_doc


def test_status_shows_each_child_and_restarts_by_cause(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 2, 3)))
    a, b = s.boot()
    s.step(1.0, s.hb(a, consuming=True, inflight=2, reconnects=1, cancels=0),
           s.hb(b, consuming=False, why="vhost t is down", reconnects=4, cancels=2, dead_letter_failures=1),
           ev.MemoryMeasured(a, 123))
    s.step(2.0, ev.Report(a, {"e": "retire", "reason": "max_tasks", "drain_now": True}))
    doc = status_doc(s.sup, 3.0, pid=42, started_wall=1e9)
    first, second, third = doc["children"]
    assert (first["pid"], first["state"], first["ready"], first["consuming"], first["why"]) == (
        1001, "draining", True, True, None)
    assert (first["inflight"], first["rss"], first["reconnects"]) == (2, 123, 1)
    assert (second["state"], second["consuming"], second["why"], second["reconnects"], second["cancels"],
            second["dead_letter_failures"]) == ("running", False, "vhost t is down", 4, 2, 1)
    assert (third["state"], third["ready"], third["replaces"]) == ("starting", False, "max_tasks")
    assert (doc["reconnects"], doc["consumer_cancels"], doc["dead_letter_failures"]) == (5, 2, 1)
    assert doc["pools"][0]["threads"] == 3 and doc["pid"] == 42 and doc["uptime"] == 3.0
    s.step(4.0, s.exited(a, 0), s.exited(b, -signal.SIGKILL))
    doc = status_doc(s.sup, 5.0, pid=42, started_wall=1e9)
    assert doc["restarts_by_cause"] == {"crash": 1, "hard_time_limit": 0, "max_tasks": 1, "max_memory": 0,
                                        "heartbeat": 0, "reload": 0}
    assert doc["restarts"] == 1 and doc["pools"][0]["restarts"]["max_tasks"] == 1
    assert (doc["reconnects"], doc["consumer_cancels"]) == (5, 2)  # kept after the children left


def test_heartbeats_of_older_children_and_garbage_fields_are_tolerated(sim):
    s = sim()
    a, b = s.boot()
    s.step(1.0, ev.Report(a, {"e": "hb"}), ev.Report(b, {"e": "hb", "inflight": "x", "reconnects": None,
                                                          "stats": "nonsense", "idle": []}))
    doc = status_doc(s.sup, 2.0, pid=1, started_wall=0.0)
    assert [(c["inflight"], c["reconnects"], c["consuming"], c["why"]) for c in doc["children"]] == [
        (0, 0, False, None), (0, 0, False, None)]
    s.step(3.0, ev.Report(a, {"e": "something new"}))  # an unknown event is only a sign of life
    assert s.sup.children[a].last_seen == 3.0


def test_metrics_show_consuming_reconnects_cancels_and_replacements(sim):
    s = sim(sim.make_plan(PoolSpec("main", ("q",), 2, 3)))
    a, b = s.boot()
    s.step(1.0, s.done(a, 7, reconnects=3, cancels=1), s.hb(b, consuming=False, why="x"))
    s.step(2.0, s.exited(b, -signal.SIGKILL))
    text = metrics_text(s.sup, 3.0)
    assert 'utilitarian_child_consuming{worker="w@test",pool="main",pid="1001"} 1' in text
    assert 'utilitarian_reconnects_total{worker="w@test"} 3' in text
    assert 'utilitarian_consumer_cancels_total{worker="w@test"} 1' in text
    assert 'utilitarian_child_replacements_total{worker="w@test",pool="main",cause="crash"} 1' in text
    assert 'utilitarian_child_restarts_total{worker="w@test"} 1' in text
    assert 'task="t",outcome="done"} 7' in text
