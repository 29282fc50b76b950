"""The shipped alert rules (deploy/monitoring) pass `promtool check rules` and their unit tests
(`promtool test rules`: each alert fires on the series it is for, and not on its near misses). In
CI a missing promtool fails the run (Debian's `prometheus` package has it; .ci/run installs it)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

MONITORING = pathlib.Path(__file__).resolve().parents[3] / "deploy" / "monitoring"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: apt-get install prometheus"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def test_rules_are_valid(promtool):
    proc = subprocess.run([promtool, "check", "rules", "utilitarian-alerts.yml"], cwd=MONITORING,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_unit_tests_pass(promtool):
    proc = subprocess.run([promtool, "test", "rules", "utilitarian-alerts.test.yml"], cwd=MONITORING,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test():
    import re

    rules = set(re.findall(r"^\s*- alert: (\w+)", (MONITORING / "utilitarian-alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "utilitarian-alerts.test.yml").read_text()))
    assert rules and rules <= tested, rules - tested
