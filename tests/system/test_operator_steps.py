"""What an operator types does what docs/operations.md says (issue 15 item 5), under the real
systemd 252 of the one machine run (conftest.py; scenarios in machine/operator_steps.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.system


def shim_steps(log: str) -> list[dict]:
    """The restore shims' records: one per `rm`/`install` call, with what still ran at that moment."""
    steps: list[dict] = []
    for line in log.splitlines():
        if line.startswith("== "):
            steps.append({"cmd": line[3:], "alive": [], "active": "", "task": []})
        elif line.startswith("alive "):
            steps[-1]["alive"].append(int(line.split()[1]))
        elif line.startswith("active "):
            steps[-1]["active"] = line[7:].split()
        elif line.startswith("task "):
            steps[-1]["task"].append(line[5:])
    return steps


def test_restore_touches_the_store_only_after_every_worker_exited(machine):
    r = machine.scenario("restore")
    assert r["doc"]["rc"] == 0, r["doc"]["stderr"][-4000:]
    steps = shim_steps(r["shim_log"])
    assert [s["cmd"] for s in steps] == ["rm", "install"], r["shim_log"]
    assert r["pids_before"], "no worker processes were watched"
    for step in steps:
        # When the documented restore removed the WAL and copied the backup, no process of the
        # workers or the beat was left (masters and children), every unit was inactive,
        assert step["alive"] == [], (step, r["mainpids"])
        assert step["active"] == ["inactive", "inactive", "inactive"], step
        # and the slow task that was running at the stop had finished: drained, not killed.
        assert step["task"] == ["start", "done"], step
    assert r["task"] == {"start": 1, "done": 1}
    assert r["test_worker"]["Result"] == "success" and r["test_worker"]["ExecMainStatus"] == "0", r["test_worker"]
    assert not r["journal_kill"], r["journal_kill"]
    # The target runs again on the restored store, which belongs to the service user.
    for unit, after in r["after"].items():
        assert after["ActiveState"] == "active" and after["MainPID"] != r["mainpids"][unit], (unit, after)
    assert r["integrity"] == "ok"
    assert r["store"]["mode"] == "0o640" and r["store"]["uid"] == machine.scenario("install")["utilitarian_uid"]


def test_reload_with_a_broken_file_fails_and_keeps_the_running_configuration(machine):
    r = machine.scenario("reload_broken")
    # systemctl reload fails visibly,
    assert r["reload"]["rc"] != 0, r["reload"]
    assert any("/etc/utilitarian/utilitarian.toml" in line for line in r["reload_journal"]), r["reload_journal"]
    assert not any("configuration reloaded" in line for line in r["reload_journal"]), r["reload_journal"]
    # and the worker keeps running as it was: same master, same children, same pools.
    after = r["after_reload"]
    assert (after["ActiveState"], after["SubState"]) == ("active", "running"), after
    assert after["MainPID"] == r["mainpid_before"] and after["NRestarts"] == "0"
    assert r["children_after"] == r["children_before"] and r["threads_after"] == r["threads_before"]


def test_a_hup_with_a_broken_file_is_refused_by_the_master_and_shown_in_status(machine):
    r = machine.scenario("reload_broken")
    assert "reload failed, old configuration kept" in r["hup_status"], r["hup_status"]
    assert any("reload failed, keeping the running configuration" in line for line in r["hup_journal"])
    assert r["status_reload_error"], "utilitarian status --json shows no reload error"
    assert "reload failed, running the old configuration" in r["status_text"], r["status_text"]
    assert r["children_after"] == r["children_before"]
    # A fixed file reloads again and the refusal leaves the status line.
    assert r["reload_fixed"]["rc"] == 0, r["reload_fixed"]
    assert "reload failed" not in r["status_after_fix"]


@pytest.mark.parametrize("case", ["term", "ctrl_c_piped", "ctrl_c_tty"])
def test_interrupting_a_hand_started_beat_stops_its_unit(machine, case):
    r = machine.scenario("cli_interrupt")
    c = r[case]
    # The command returned (no hang), its unit is gone or stopped, and the beat process with it.
    assert c["rc"] != "timeout", c
    assert c["left"]["ActiveState"] in ("inactive", "failed") or c["left"]["LoadState"] == "not-found", c
    assert c["main_gone"], c
    # The beat stopped as under its own unit (drained, exit 0), not killed by a hang-up or SIGKILL.
    assert "stopped (exit 0)" in c["output"], c["output"]
    assert not r["left_running"], r["left_running"]
