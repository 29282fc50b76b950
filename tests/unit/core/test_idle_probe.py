"""The idle probe runner of a worker child (pure, no broker): answers are cached for the pump
thread, a failing probe keeps its last answer, and disabled probing asks nothing."""

from __future__ import annotations

from utilitarian.supervisor.idle_probe import PendingLaterProbe


def test_answers_are_cached_and_a_failing_probe_keeps_its_last_answer():
    answers = [True, RuntimeError("database unreachable"), False]
    asked = []

    def probe(app, queues):
        asked.append(queues)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    runner = PendingLaterProbe("app", ("q.monthly",), [("amr", probe)])
    assert runner.pending_later is False  # nothing answered yet
    assert runner.probe_once() is True
    assert runner.probe_once() is True and runner.pending_later is True  # the blip changes nothing
    assert runner.probe_once() is False
    assert asked == [("q.monthly",)] * 3


def test_any_probe_saying_later_is_enough():
    runner = PendingLaterProbe(None, (), [("a", lambda app, q: False), ("b", lambda app, q: True)])
    assert runner.probe_once() is True


def test_a_child_that_does_not_exit_when_idle_asks_no_probe():
    runner = PendingLaterProbe.for_child(None, ("q",), enabled=False)
    assert runner.probes == [] and runner.start() is runner and runner.pending_later is False
