"""Tracebacks instead of errors (issue 11 item 7), the command-line cases: each now ends in a clear
error naming the file and key with its exit code (78 configuration, 65 a meter list), or a normal
answer. Non-UTF-8 `password_file`/`url_file` and port 0 in the webhook URL are in the config
corpus (tests/unit/config_corpus 42-44), SQLite in tests/unit/amr_pipeline/test_store_errors.py."""

from __future__ import annotations

import json

import pytest

from utilitarian.amr.target import parse_meter_url
from utilitarian.cli import main
from utilitarian.errors import ConfigError


@pytest.fixture
def site(tmp_path, monkeypatch):
    config = tmp_path / "utilitarian.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "amr.sqlite3"}"\n\n'
                      f'[paths]\nstate_dir = "{tmp_path}"\nruntime_dir = "{tmp_path / "run"}"\n\n'
                      '[schedule.kiritimati]\ncron = "0 1 * * *"\ntask = "utilitarian.ping"\n'
                      'timezone = "Pacific/Kiritimati"\n')
    monkeypatch.setenv("UTILITARIAN_CONFIG", str(config))
    return tmp_path


@pytest.mark.parametrize("at", ["9999-12-31T23:59:00", "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00"])
def test_schedule_show_at_the_ends_of_the_calendar(site, capsys, at):
    # Was OverflowError (exit 70): croniter steps past year 9999, a zone's offset past year 1.
    assert main(["schedule", "show", "--json", "--at", at]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["amr-daily"]["next"] == [] if at.startswith("9999") else len(rows["amr-daily"]["next"]) == 5
    assert main(["schedule", "show", "--at", at]) == 0
    assert "kiritimati" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["modbus+tcp://127.0.0.1:0?device_id=1", "iec62056-21+tcp://10.0.0.1:0"])
def test_meter_url_port_zero_is_refused(url):
    with pytest.raises(ConfigError) as err:
        parse_meter_url(url)
    assert err.value.key == "url" and "between 1 and 65535" in err.value.reason


def test_meters_import_with_port_zero_is_an_error_naming_the_row(site, capsys):
    # Was ValueError from the interface parser (exit 70), with or without --dry-run.
    path = site / "meters.toml"
    path.write_text('[[meters]]\nname = "m1"\nurl = "modbus+tcp://127.0.0.1:0?device_id=1"\n'
                    'execution_type = "generic_modbus"\nmeter_type = "eastron_sdm120"\n')
    assert main(["db", "migrate"]) == 0
    for dry in ([], ["--dry-run"]):
        assert main(["meters", "import", str(path), *dry]) == 65
        err = capsys.readouterr().err
        assert f"{path}:1: meter 'm1': url: port must be a number between 1 and 65535" in err
        assert "Traceback" not in err


@pytest.mark.parametrize("database", ["unmigrated", "unopenable"])
def test_meters_import_dry_run_needs_no_usable_store(site, capsys, database):
    # The Build list: `meters import --dry-run` validates without a migrated store; a store that
    # cannot even be opened (a path that is a directory: a StoreError now, a raw sqlite3 error before)
    # must not stop it either.
    if database == "unopenable":
        (site / "store-dir").mkdir()
        config = site / "utilitarian.toml"
        config.write_text(config.read_text().replace("amr.sqlite3", "store-dir"))
    path = site / "meters.toml"
    path.write_text('[[meters]]\nname = "m1"\nurl = "modbus+tcp://127.0.0.1:1502?device_id=1"\n'
                    'execution_type = "generic_modbus"\nmeter_type = "eastron_sdm120"\n')
    assert main(["meters", "import", str(path), "--dry-run"]) == 0
    assert "dry run without the store" in capsys.readouterr().out
    assert main(["meters", "import", str(path)]) == (78 if database == "unmigrated" else 75)
