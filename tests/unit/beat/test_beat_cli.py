"""`utilitarian beat` and `utilitarian schedule` refuse bad input with exit 78 naming the entry
and key, before any broker is contacted; `schedule show` lists next fires in UTC and the zone."""

from __future__ import annotations

import json

import pytest

from utilitarian.cli import main

# Port 9 (discard) refuses: proves the refusal comes before any connection attempt.
HEAD = '[broker]\nurl = "amqp://guest:guest@127.0.0.1:9/"\n[beat]\nbuiltin_schedules = false\n'

BAD = {
    "cron": ('cron = "0 25 * * *"\ntask = "utilitarian.ping"\n', "schedule.nightly.cron"),
    "alias": ('cron = "@fortnightly"\ntask = "utilitarian.ping"\n', "schedule.nightly.cron"),
    "zone": ('cron = "0 2 * * *"\ntask = "utilitarian.ping"\ntimezone = "Europe/Stokholm"\n',
             "schedule.nightly.timezone"),
    "task": ('cron = "0 2 * * *"\ntask = "amr.no_such_task"\n', "schedule.nightly.task"),
    "queue": ('cron = "0 2 * * *"\ntask = "utilitarian.ping"\nqueue = "fast"\n', "schedule.nightly.queue"),
    "grace": ('cron = "0 2 * * *"\ntask = "utilitarian.ping"\nmisfire_grace = -5\n',
              "schedule.nightly.misfire_grace"),
}


@pytest.mark.parametrize("command", [["beat"], ["schedule", "show"], ["schedule", "fire", "nightly"]])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_entry_exits_78_naming_entry_and_key(tmp_path, capsys, command, case):
    body, key = BAD[case]
    f = tmp_path / "u.toml"
    f.write_text(HEAD + "[schedule.nightly]\n" + body)
    assert main([*command, "--config", str(f)]) == 78
    err = capsys.readouterr().err
    assert key in err and str(f) in err


def test_a_typo_in_a_builtin_override_exits_78(tmp_path, capsys):
    f = tmp_path / "u.toml"
    f.write_text('[broker]\nurl = "amqp://guest:guest@127.0.0.1:9/"\n'
                 '[schedule.amr-weekly]\ntask = "amr.dispatch_schedul"\n')
    assert main(["beat", "--config", str(f)]) == 78
    assert "schedule.amr-weekly.task: unknown task 'amr.dispatch_schedul'; did you mean" in capsys.readouterr().err


def test_schedule_show_lists_next_fires_in_utc_and_local_time(tmp_path, capsys):
    f = tmp_path / "u.toml"
    f.write_text(HEAD + '[schedule.sthlm]\ncron = "30 2 * * *"\ntask = "utilitarian.ping"\n'
                 'timezone = "Europe/Stockholm"\n[schedule.off]\ncron = "@hourly"\ntask = "x.y"\nenabled = false\n')
    assert main(["schedule", "show", "--config", str(f), "--at", "2024-03-29T12:00:00Z", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert [n["utc"] for n in rows["sthlm"]["next"]] == [
        "2024-03-30T01:30:00+00:00", "2024-03-31T01:00:00+00:00", "2024-04-01T00:30:00+00:00",
        "2024-04-02T00:30:00+00:00", "2024-04-03T00:30:00+00:00"]
    assert rows["sthlm"]["next"][1]["local"] == "2024-03-31T03:00:00+02:00"
    assert rows["sthlm"]["queue"] == "utilitarian.tasks.default"
    assert rows["off"]["enabled"] is False and len(rows["off"]["next"]) == 5
    assert main(["schedule", "show", "--config", str(f), "--at", "2024-10-26T12:00:00Z", "-n", "2"]) == 0
    text = capsys.readouterr().out
    assert "2024-10-27T00:30:00+00:00   2024-10-27T02:30:00+02:00 Europe/Stockholm" in text
    assert "[disabled]" in text


def test_schedule_fire_unknown_entry_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "u.toml"
    f.write_text(HEAD + '[schedule.a]\ncron = "@hourly"\ntask = "utilitarian.ping"\n')
    assert main(["schedule", "fire", "b", "--config", str(f)]) == 64
    assert "no schedule entry 'b' (entries: a)" in capsys.readouterr().err
