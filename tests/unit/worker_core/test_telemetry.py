"""Metrics task code counts in children: counters and histograms summed over children (retired ones
included), gauges combined as declared (sum, or max for a figure every child reads from the store)
and dropped with the child that set them; and the metrics port of each profile."""

from __future__ import annotations

from utilitarian.supervisor.metrics import port_for
from utilitarian.telemetry import Family, Merged, Registry, render


def child(*ops) -> dict:
    reg = Registry()
    polls = reg.declare(Family("utilitarian_x_polls_total", "counter", "Polls.", ("protocol",)))
    waits = reg.declare(Family("utilitarian_x_waiting", "gauge", "Waiting.", ()))
    rounds = reg.declare(Family("utilitarian_x_round", "gauge", "Round.", ("schedule",), merge="max"))
    seconds = reg.declare(Family("utilitarian_x_seconds", "histogram", "Time.", (), buckets=(1.0, 5.0)))
    for op in ops:
        kind, *args = op
        if kind == "poll":
            reg.add(polls, (args[0],), 1)
        elif kind == "wait":
            reg.put(waits, (), args[0])
        elif kind == "round":
            reg.put(rounds, ("daily",), args[0])
        elif kind == "took":
            reg.observe(seconds, (), args[0])
    return reg.snapshot()


def test_children_are_summed_gauges_merged_as_declared_and_retired_counters_kept():
    merged = Merged()
    merged.update(1, child(("poll", "modbus"), ("poll", "modbus"), ("wait", 2), ("round", 10), ("took", 0.5)))
    merged.update(2, child(("poll", "modbus"), ("poll", "mbus"), ("wait", 1), ("round", 12), ("took", 7.0)))
    text = "\n".join(render("w@h", merged))
    assert 'utilitarian_x_polls_total{worker="w@h",protocol="modbus"} 3' in text
    assert 'utilitarian_x_waiting{worker="w@h"} 3' in text
    assert 'utilitarian_x_round{worker="w@h",schedule="daily"} 12' in text
    assert 'utilitarian_x_seconds_bucket{worker="w@h",le="1.0"} 1' in text
    assert 'utilitarian_x_seconds_bucket{worker="w@h",le="+Inf"} 2' in text
    merged.retire(2)
    text = "\n".join(render("w@h", merged))
    assert 'utilitarian_x_polls_total{worker="w@h",protocol="mbus"} 1' in text  # kept after the exit
    assert 'utilitarian_x_waiting{worker="w@h"} 2' in text  # its gauge left with it
    assert 'utilitarian_x_seconds_count{worker="w@h"} 2' in text


def test_each_profile_has_a_port_of_its_own():
    profiles = {"default": None, "amr-frequent": None, "amr-daily": None}
    assert port_for(9810, profiles, None) == 9810
    assert [port_for(9810, profiles, p) for p in profiles] == [9811, 9812, 9813]
    assert port_for(None, profiles, "default") is None and port_for(0, profiles, "default") == 0
