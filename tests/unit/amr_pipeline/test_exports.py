"""`readings export` and `readings events` write CSV and JSON alike (issue 11, Build list): the same
columns, every row in [--since, --until) ordered by time, values as the stored text, a file with -o;
JSON parses back to the CSV's rows. Through the real CLI on a migrated SQLite store."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from utilitarian.amr.model import MeterReading, MeterSystemEvent
from utilitarian.amr.store import open_store
from utilitarian.cli import main

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def site(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path / 'amr.sqlite3'}"
    config = tmp_path / "utilitarian.toml"
    config.write_text(f'[database]\nurl = "{db}"\n[paths]\nstate_dir = "{tmp_path}"\nruntime_dir = "{tmp_path}/run"\n')
    monkeypatch.setenv("UTILITARIAN_CONFIG", str(config))
    assert main(["db", "migrate"]) == 0
    meters = tmp_path / "meters.toml"
    meters.write_text("".join(f'[[meters]]\nname = "m{i}"\nurl = "modbus+tcp://127.0.0.1:1502?device_id={i}"\n'
                              'execution_type = "generic_modbus"\nmeter_type = "eastron_sdm120"\n' for i in (1, 2)))
    assert main(["meters", "import", str(meters), "--no-promote"]) == 0
    with open_store(db) as store:
        store.commit_readings([MeterReading(f"m{i}", "active_energy_import", T0 + dt.timedelta(hours=h),
                                            f"{100 + h}.10", "kWh") for h in range(3) for i in (1, 2)])
        store.save_events([MeterSystemEvent(f"e{h}", "m1", "Poll failed", f"timeout, \"attempt\" {h}",
                                            T0 + dt.timedelta(hours=h)) for h in range(3)])
    capsys.readouterr()
    return tmp_path


def export(capsys, *args) -> str:
    assert main(["readings", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("what, columns, count", [
    ("export", ["timestamp", "meter", "series", "value", "unit"], 4),
    ("events", ["timestamp", "meter", "title", "content", "id"], 2),
])
def test_csv_and_json_carry_the_same_rows(site, capsys, what, columns, count):
    window = ["--since", "2026-11-01T01:00:00Z", "--until", "2026-11-01T03:00:00Z"]
    rows = list(csv.DictReader(io.StringIO(export(capsys, what, "--format", "csv", *window))))
    doc = json.loads(export(capsys, what, "--format", "json", *window))
    assert list(rows[0]) == columns and rows == doc and len(doc) == count
    assert [r["timestamp"] for r in doc] == sorted(r["timestamp"] for r in doc)
    assert doc[0]["timestamp"] == "2026-11-01T01:00:00Z"
    if what == "export":
        assert doc[0]["value"] == "101.10"       # the stored text, not a float
    else:
        assert doc[0]["content"] == 'timeout, "attempt" 1'


def test_output_file_and_empty_range(site, capsys):
    out = site / "events.json"
    assert main(["readings", "events", "--format", "json", "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 3 and "3 events written" in capsys.readouterr().err
    assert json.loads(export(capsys, "events", "--format", "json", "--since", "2030-01-01T00:00:00Z")) == []
    assert export(capsys, "events", "--format", "csv", "--meter", "m2") == "timestamp,meter,title,content,id\r\n"


def test_text_stays_the_latest_n_and_refuses_export_options(site, capsys):
    lines = export(capsys, "events", "-n", "2").splitlines()
    assert len(lines) == 2 and lines[-1].startswith("2026-11-01T02:00:00Z")
    assert main(["readings", "events", "--since", "2026-11-01T00:00:00Z"]) == 64
