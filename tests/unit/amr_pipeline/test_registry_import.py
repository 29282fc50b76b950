"""Meter lists: every bad row reported with its line before anything is written; TOML tables with
their line numbers; passwords kept out of messages and URLs."""

from __future__ import annotations

import textwrap

import pytest

from utilitarian.amr.registry_import import ImportErrors, Known, load_meter_list
from utilitarian.amr.store import open_store
from utilitarian.cli import main

GOOD = "modbus+tcp://127.0.0.1:5020?device_id={}"


@pytest.fixture
def site(tmp_path):
    db = tmp_path / "amr.sqlite3"
    config = tmp_path / "u.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n[paths]\nstate_dir = "{tmp_path}"\n'
                      '[beat]\nbuiltin_schedules = false\n')
    assert main(["db", "migrate", "--config", str(config)]) == 0
    return config, f"sqlite:///{db}"


def test_csv_with_bad_rows_writes_nothing_and_lists_every_bad_line(site, tmp_path, capsys):
    config, db = site
    meters = tmp_path / "meters.csv"
    meters.write_text(textwrap.dedent(f"""\
        name,url,execution_type,meter_type,can_block,timezone,series,password
        ok-1,{GOOD.format(1)},generic_modbus,eastron_sdm120,false,UTC,voltage current,
        ,{GOOD.format(2)},generic_modbus,eastron_sdm120,false,UTC,voltage,
        bad-url,ftp://x/,generic_modbus,eastron_sdm120,false,UTC,voltage,
        ok-2,{GOOD.format(3)},generic_modbus,eastron_sdm120,false,UTC,voltage,
        bad-bits,{GOOD.format(4)},generic_modbus,no_such_type,perhaps,Mars/Olympus,voltage,
        ok-1,{GOOD.format(5)},generic_modbus,eastron_sdm120,false,UTC,voltage,
        ok-3,{GOOD.format(6)}&password=topsecret,generic_modbus,eastron_sdm120,false,Mars,voltage,
        """))
    code = main(["meters", "import", str(meters), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 65
    bad_lines = sorted({int(line.split(":")[1]) for line in err.splitlines() if line.startswith(str(meters))})
    assert bad_lines == [3, 4, 6, 7, 8]  # 8: a bad zone on a row whose URL has a password
    assert "name: is required" in err and "unsupported scheme 'ftp'" in err
    assert "can_block: must be true or false" in err and "unknown time zone 'Mars/Olympus'" in err
    assert "unknown Modbus meter type 'no_such_type'" in err and "name already used on line 2" in err
    assert "topsecret" not in err
    with open_store(db) as store:
        assert store.list_meters() == []


def test_a_good_csv_is_imported_with_the_password_kept_apart(site, tmp_path, capsys):
    config, db = site
    meters = tmp_path / "meters.csv"
    meters.write_text("name,url,execution_type,can_block,series,password\n"
                      f"a,{GOOD.format(1)}&type=eastron_sdm120,generic_modbus,yes,voltage;current,s3cret\n")
    assert main(["meters", "import", str(meters), "--config", str(config)]) == 0
    with open_store(db) as store:
        [meter] = store.list_meters()
    assert meter.password == "s3cret" and "s3cret" not in meter.url and "s3cret" not in repr(meter)
    assert meter.meter_type == "eastron_sdm120" and meter.interface.can_block
    assert meter.config.series == ("current", "voltage")
    assert "s3cret" not in capsys.readouterr().out


def test_toml_rows_are_reported_by_the_line_of_their_table(tmp_path):
    path = tmp_path / "meters.toml"
    path.write_text(textwrap.dedent(f"""\
        [[amr_tasks]]
        name = "read"
        schedule = "fortnightly"
        task_call = "read_values"
        meter_execution_type = "generic_modbus"

        [[meters]]
        name = "a"
        url = "{GOOD.format(1)}"
        execution_type = "generic_modbus"
        meter_type = "eastron_sdm120"

        [[meters]]
        name = "b"
        url = "{GOOD.format(2)}"
        execution_type = "generic_modbus"
        meter_type = "eastron_sdm120"
        can_block = true

        [[meters]]
        name = "c"
        url = "{GOOD.format(3)}"
        execution_type = "generic_modbus"
        meter_type = "eastron_sdm120"
        tasks = ["missing"]
        """))
    from utilitarian.amr.meter_types import load_builtin_meter_types

    with pytest.raises(ImportErrors) as info:
        load_meter_list(str(path), Known(meter_types=load_builtin_meter_types()))
    text = str(info.value)
    assert f"{path}:1: amr_tasks 'read': schedule: must be one of" in text
    assert f"{path}:20: meter 'c': tasks: no AMR task named 'missing'" in text
    assert f"{path}:13: meter 'b': interface 127.0.0.1:5020 has can_block=true here but false on line 7" in text


@pytest.mark.parametrize("name", ["meters.example.toml", "meters.example.csv"])
def test_shipped_examples_import(site, name, capsys):
    import pathlib

    config, db = site
    example = pathlib.Path(__file__).parents[3] / "etc" / name
    if name.endswith(".csv"):  # the CSV names groups the TOML defines: import the TOML's tasks first
        assert main(["meters", "import", str(example.with_suffix(".toml")), "--config", str(config)]) == 0
    assert main(["meters", "import", str(example), "--config", str(config)]) == 0, capsys.readouterr().err
    with open_store(db) as store:
        meters = {m.name: m for m in store.list_meters()}
        jobs = store.jobs_for_schedule("daily")
    assert set(meters) == {"substation-7-feeder-1", "substation-7-feeder-2", "house-1042", "house-1043"}
    assert meters["house-1042"].password == "00000000" and meters["house-1042"].interface.can_block
    assert ("house-1043", "iec-readout-daily", 0.0) in jobs
