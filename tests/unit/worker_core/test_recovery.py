"""The consumer's recovery rules with an injected clock: boot vs running exit codes (gunicorn's
rule), capped backoff, one log line per change of state, broker cancels, counters."""

from __future__ import annotations

import pika.exceptions as pe
import pytest

from utilitarian.broker.connection import translate
from utilitarian.broker.recovery import (MISMATCH, MISSING, REFUSED, UNREACHABLE, ConnectionRules, Exit,
                                         Retry, classify)
from utilitarian.errors import (EX_CONFIG, AuthenticationRefused, BrokerUnavailable, TLSRefused, TopologyError)


def topology(code: int) -> TopologyError:
    err = TopologyError(f"h:5672/v: {code} NOT_FOUND - no queue 'utilitarian.tasks.default'")
    err.reply_code = code
    return err


ERRORS = {
    "unreachable": BrokerUnavailable("cannot reach h:5672/v: connection refused"),
    "refused": AuthenticationRefused("h:5672/v: access to the vhost was refused"),
    "tls": TLSRefused("h:5671/v: the broker's TLS certificate was not accepted"),
    "missing": topology(404),
    "mismatch": topology(406),
}


@pytest.mark.parametrize("name, kind", [("unreachable", UNREACHABLE), ("refused", REFUSED), ("tls", REFUSED),
                                        ("missing", MISSING), ("mismatch", MISMATCH)])
def test_classify(name, kind):
    assert classify(ERRORS[name]) == kind


# boot_may_fail, consumed before, error -> exit code or "retry" (+ redeclare?)
@pytest.mark.parametrize("boot_may_fail, consumed, error, expect", [
    # booting, and the master says a boot failure may stop it: refusals are configuration
    (True, False, "refused", EX_CONFIG),
    (True, False, "tls", EX_CONFIG),
    (True, False, "mismatch", EX_CONFIG),
    (True, False, "unreachable", "retry"),
    (True, False, "missing", "retry+redeclare"),  # declaring creates it: never a boot failure
    # a sibling was ready already: the same refusal is a transient broker state
    (False, False, "refused", "retry"),
    (False, False, "tls", "retry"),
    (False, False, "mismatch", "retry"),
    (False, False, "missing", "retry+redeclare"),
    # this child consumed before: retried whatever the master said
    (True, True, "refused", "retry"),
    (True, True, "tls", "retry"),
    (True, True, "mismatch", "retry"),
    (True, True, "unreachable", "retry"),
    (True, True, "missing", "retry+redeclare"),
])
def test_open_failures_boot_vs_running(boot_may_fail, consumed, error, expect):
    rules = ConnectionRules(boot_may_fail=boot_may_fail, backoff_first=1.0, backoff_cap=8.0)
    if consumed:
        rules.on_consuming(0.0)
    decision = rules.on_open_failed(10.0, ERRORS[error])
    if isinstance(expect, int):
        assert decision == Exit(expect, str(ERRORS[error]))
        return
    assert isinstance(decision, Retry)
    assert 10.0 + 0.5 <= decision.at <= 10.0 + 1.0  # first delay: [first/2, first]
    assert decision.redeclare == expect.endswith("redeclare")
    assert rules.why and rules.why.split(":")[0] in ("broker unreachable", "access refused", "queue missing",
                                                      "topology refused")


def test_backoff_doubles_to_its_cap_and_resets_once_consuming():
    rules = ConnectionRules(boot_may_fail=False, backoff_first=1.0, backoff_cap=8.0)
    delays = [rules.on_open_failed(float(i), ERRORS["unreachable"]).delay for i in range(7)]
    ceilings = [1, 2, 4, 8, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings)), delays
    rules.on_consuming(100.0)
    assert rules.on_connection_lost(101.0, ERRORS["unreachable"]).delay <= 1.0


def test_one_log_line_per_change_of_state():
    rules = ConnectionRules(boot_may_fail=False)
    rules.on_consuming(0.0)
    # a loss always says so (consuming stopped), with what happens to the tasks in flight
    lost = rules.on_connection_lost(1.0, ERRORS["unreachable"])
    assert lost.log and lost.log.startswith("connection lost") and "redelivered" in lost.log
    # the same refusal again and again: quiet after the first line
    lines = [rules.on_open_failed(2.0 + i, ERRORS["refused"]).log for i in range(5)]
    assert lines[0] is not None and "access refused" in lines[0]
    assert lines[1:] == [None] * 4
    # another state: one line again
    assert rules.on_open_failed(8.0, ERRORS["unreachable"]).log is not None
    assert rules.on_open_failed(9.0, ERRORS["unreachable"]).log is None
    # back to consuming: one line saying so, and how long it took
    line = rules.on_consuming(12.0)
    assert line and line.startswith("consuming again after 11.0s")
    assert rules.why is None and rules.reconnects == 1


def test_why_reconnects_and_cancels():
    rules = ConnectionRules()
    assert rules.why == "connecting" and rules.reconnects == 0
    assert rules.on_consuming(0.0) is None  # the first start is not a recovery
    assert rules.why is None and rules.reconnects == 0
    # the broker cancels the consumer of one queue
    retry = rules.on_cancel(5.0, "utilitarian.tasks.default")
    assert retry.redeclare and rules.redeclare
    assert rules.cancels == 1
    assert rules.why == "consumer cancelled by the broker: queue utilitarian.tasks.default"
    assert retry.log and "consumer cancelled by the broker" in retry.log
    assert 5.25 <= retry.at <= 5.5
    # a second cancel of the same queue while waiting: counted, not logged again
    again = rules.on_cancel(5.6, "utilitarian.tasks.default")
    assert rules.cancels == 2 and again.log is None
    line = rules.on_resumed(6.0)
    assert line and line.startswith("consuming again after 1.0s")
    assert rules.why is None and not rules.redeclare and rules.reconnects == 1
    # resuming with nothing wrong says nothing
    assert rules.on_resumed(7.0) is None


def test_a_redeclare_is_asked_until_consuming_works():
    rules = ConnectionRules(boot_may_fail=False)
    assert rules.on_open_failed(0.0, ERRORS["missing"]).redeclare
    # a later unreachable broker does not forget that the topology must be declared again
    assert rules.on_open_failed(1.0, ERRORS["unreachable"]).redeclare
    rules.on_consuming(2.0)
    assert not rules.redeclare


def closed_by_broker(code: int, text: str):
    return pe.ConnectionClosedByBroker(code, text)


@pytest.mark.parametrize("exc, kind, code", [
    # what RabbitMQ 3.10 answers a connection.open to a vhost that is (re)starting
    (pe.ProbableAccessDeniedError('ConnectionClosedByBroker: (541) "INTERNAL_ERROR - access to vhost \'v\' refused '
                                  'for user \'guest\': vhost \'v\' is down"'), BrokerUnavailable, None),
    # what a consuming connection gets when its vhost goes down
    (closed_by_broker(320, "CONNECTION_FORCED - vhost 'v' is down"), BrokerUnavailable, 320),
    (pe.ProbableAccessDeniedError("ConnectionClosedByBroker: (530) \"NOT_ALLOWED - access to vhost 'v' refused\""),
     AuthenticationRefused, None),
    (closed_by_broker(530, "NOT_ALLOWED - vhost v not found"), AuthenticationRefused, 530),
    (pe.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'q'"), TopologyError, 404),
    (pe.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg"), TopologyError, 406),
])
def test_translate_keeps_the_reply_code_and_calls_a_down_vhost_transient(exc, kind, code):
    err = translate(exc)
    assert type(err) is kind
    assert getattr(err, "reply_code", None) == code
