"""The registry where the operator types: `amr-tasks add/attach`, `meters import` (TOML and the
platform's JSON export) and `config check` refuse what a worker would refuse, naming it, and write
nothing; identifiers and CT/VT ratios survive an import; bad value types are errors, not tracebacks."""

from __future__ import annotations

import json
import textwrap

import pytest

from utilitarian.amr.store import open_store
from utilitarian.cli import main

UUID = "890b61bb-6594-48db-ad90-584d56754455"


@pytest.fixture
def site(tmp_path, monkeypatch):
    db = tmp_path / "amr.sqlite3"
    config = tmp_path / "utilitarian.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n\n[paths]\nstate_dir = "{tmp_path}"\n'
                      f'runtime_dir = "{tmp_path / "run"}"\n')
    monkeypatch.setenv("UTILITARIAN_CONFIG", str(config))
    return tmp_path, f"sqlite:///{db}"


def migrate(url):
    with open_store(url) as store:
        store.migrate()


def tasks_in(url):
    with open_store(url) as store:
        return {t.name: t for t in store.list_amr_tasks()}


@pytest.mark.parametrize("argv, reason", [
    (["--execution-type", "generic_corsu", "--call", "read_database"], "did you mean 'generic_corus'"),
    (["--execution-type", "generic_lis200", "--call", "read_archive"], "unknown task_call"),
    (["--execution-type", "generic_lis200", "--call", "read_archive_by_date", "--kwargs",
      '{"start_date": "2020-01-01T00:00:00", "archive_no": 3}'], "unknown kwarg 'archive_no'"),
    (["--execution-type", "generic_corus", "--call", "read_database"], "missing required kwarg 'database'"),
    (["--execution-type", "generic_lis200", "--call", "set_time", "--offset", "901"],
     "more than the quarterly schedule's period"),
])
def test_amr_tasks_add_refuses_and_writes_nothing(site, capsys, argv, reason):
    _tmp, url = site
    migrate(url)
    assert main(["amr-tasks", "add", "t1", "--schedule", "quarterly", *argv]) == 64
    assert reason in capsys.readouterr().err
    assert tasks_in(url) == {}


def _meter_list(tmp, body: str):
    path = tmp / "meters.toml"
    path.write_text(textwrap.dedent(body))
    return str(path)


LIS_METER = """
[[meters]]
name = "ek-1"
url = "lis200+tcp://127.0.0.1:4001"
execution_type = "generic_lis200"
uuid = "%s"
manufacturer_serial = "EK260-0042"
organization = "Gasverk"
""" % UUID


def test_attaching_a_task_to_a_meter_it_cannot_run_on_is_refused(site, capsys):
    tmp, url = site
    migrate(url)
    assert main(["meters", "import", _meter_list(tmp, LIS_METER)]) == 0
    assert main(["amr-tasks", "add", "corus-daily", "--schedule", "daily", "--execution-type", "generic_corus",
                 "--call", "read_database", "--kwargs", '{"database": "daily"}']) == 0
    capsys.readouterr()
    assert main(["amr-tasks", "attach", "corus-daily", "--meter", "ek-1"]) == 64
    assert "is for generic_corus but meter 'ek-1' is generic_lis200" in capsys.readouterr().err
    with open_store(url) as store:
        assert store.meter_tasks() == {}
        meter = store.get_meter("ek-1")
    assert (meter.uuid, meter.manufacturer_serial, meter.organization) == (UUID, "EK260-0042", "Gasverk")


def test_meters_import_refuses_bad_tasks_and_mismatches_naming_each(site, capsys):
    tmp, url = site
    migrate(url)
    path = _meter_list(tmp, LIS_METER + """
    tasks = ["corus-read"]

    [[amr_tasks]]
    name = "corus-read"
    schedule = "hourly"
    task_call = "read_database"
    meter_execution_type = "generic_corus"
    task_kwargs = { database = "hourly" }

    [[amr_tasks]]
    name = "bad-kwargs"
    schedule = "hourly"
    task_call = "read_archive_by_date"
    meter_execution_type = "generic_lis200"
    task_kwargs = { archive_number = 3 }
    run_offset_seconds = 7200
    """)
    assert main(["meters", "import", path]) == 65
    err = capsys.readouterr().err
    assert "AMR task 'corus-read' is for generic_corus but meter 'ek-1' is generic_lis200" in err
    assert "missing required kwarg 'start_date'" in err and "more than the hourly schedule's period" in err
    assert tasks_in(url) == {}
    with open_store(url) as store:
        assert store.list_meters() == []


def test_wrong_value_types_are_errors_not_tracebacks_and_dry_run_needs_no_store(site, capsys):
    # Issue 11 item 7: `timezone = 5` and `schedule = ["daily"]` gave a traceback (exit 70).
    tmp, url = site
    path = _meter_list(tmp, """
    [[meters]]
    name = "m"
    url = "iec62056-21+tcp://127.0.0.1:4000"
    execution_type = "generic_iec6205621"
    timezone = 5

    [[amr_tasks]]
    name = "t"
    schedule = ["daily"]
    task_call = "readout"
    meter_execution_type = "generic_iec6205621"
    timezone = 5
    """)
    assert main(["meters", "import", path, "--dry-run"]) == 65         # no store migrated: still validated
    err = capsys.readouterr().err
    assert "timezone: must be a time zone name in quotes, not 5" in err
    assert "schedule: must be one of" in err and "unknown key(s) timezone" in err
    assert "Traceback" not in err
    good = _meter_list(tmp, LIS_METER)
    assert main(["meters", "import", good, "--dry-run"]) == 0
    assert "dry run without the store" in capsys.readouterr().out


def test_config_check_names_tasks_a_worker_would_refuse(site, capsys):
    from utilitarian.amr.model import AmrTask

    tmp, url = site
    migrate(url)
    assert main(["config", "check"]) == 0
    with open_store(url) as store:   # written before this release validated it
        store.add_amr_task(AmrTask("old", "daily", "read_archive_by_date", "generic_lis200", {"archive": 3}))
    capsys.readouterr()
    assert main(["config", "check"]) == 78
    assert "AMR task 'old': generic_lis200.read_archive_by_date: missing required kwarg 'start_date'" in capsys.readouterr().err


def page(results):
    return {"count": len(results), "next": None, "previous": None, "results": results}


def test_platform_export_is_imported_without_losing_a_field(site, capsys):
    tmp, url = site
    migrate(url)
    iface = {"id": "0b0e8f39-7c0e-4c52-9d1b-5a0c3c1e0001", "host": "10.0.0.7", "fqdn": None, "port": 4059,
             "can_block": True, "static_ip_address": "10.0.0.7", "sim": None}
    task = {"id": "0b0e8f39-7c0e-4c52-9d1b-5a0c3c1e0002", "name": "lis-hourly", "description": "archive",
            "schedule": "hourly", "run_offset_seconds": 120, "meter_execution_type": "generic_lis200",
            "task_call": "read_archive_by_offset_seconds",
            "task_kwargs": {"offset_seconds": 7200, "archive_number": 3, "control_position": 3}}
    meter = {"id": UUID, "name": "ek-7", "external_system_reference": "INST-77", "manufacturer_serial": "7788",
             "protocol": "lis-200", "iec62056_21_address": "", "network_interface": iface["id"],
             "has_current_transformer": True, "current_transformer_ratio": 80, "has_voltage_transformer": False,
             "voltage_transformer_ratio": 1, "has_disconnector": False, "disconnector_status": None,
             "meter_tasks": [task["id"]], "task_groups": [], "created_at": "2020-01-01T00:00:00Z",
             "a_field_we_do_not_model": {"kept": [1, 2]}}
    export = {"meter-devices": [page([meter])], "network-interfaces": page([iface]), "amr-tasks": page([task]),
              "meter-security-keys": page([{"meter": UUID, "iec62056_21_password": "0000"}])}
    path = tmp / "export.json"
    path.write_text(json.dumps(export))
    assert main(["meters", "import", str(path)]) == 0, capsys.readouterr().err
    with open_store(url) as store:
        stored = store.get_meter("ek-7")
        (stored_task,) = store.list_amr_tasks()
        links = store.meter_tasks()
    assert json.loads(stored.platform_record) == meter
    assert (stored.uuid, stored.external_system_reference, stored.ct_ratio, stored.vt_ratio) == (UUID, "INST-77", "80", None)
    assert stored.url == "lis200+tcp://10.0.0.7:4059" and stored.interface.can_block and stored.password == "0000"
    assert (stored_task.uuid, stored_task.run_offset_seconds, stored_task.description) == (task["id"], 120.0, "archive")
    assert links == {"ek-7": ["lis-hourly"]}


def test_transformer_ratios_scale_what_they_scale():
    from datetime import datetime, timezone

    from utilitarian.amr.readings import PollResult, Reading, apply_transformer_ratios

    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    result = PollResult((Reading("1.8.0", at, "12.5", "kWh"), Reading("31.7.0", at, "1.25", "A"),
                         Reading("32.7.0", at, "57.7", "V"), Reading("14.7.0", at, "50.0", "Hz")))
    scaled = apply_transformer_ratios(result, ct_ratio="80", vt_ratio="100")
    assert [r.value for r in scaled.readings] == ["100000.0", "100.00", "5770.0", "50.0"]
    assert apply_transformer_ratios(result, ct_ratio=None, vt_ratio=None) is result
