"""Config loading: defaults, search order, secrets masked, and a corpus of malformed files that
must each exit 78 with a one-line error naming the file and the key."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from utilitarian.cli import main
from utilitarian.config import load_config
from utilitarian.errors import ConfigErrors

CORPUS = sorted((pathlib.Path(__file__).parent / "config_corpus").glob("*.toml"))


def expected(path: pathlib.Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first[len("# expect: "):]


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_malformed_config_exits_78_naming_the_key(path, capsys):
    code = main(["config", "check", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 78
    assert str(path) in err
    assert expected(path) in err
    assert "Traceback" not in err


def test_real_binary_exits_78_without_traceback(tmp_path):
    bad = tmp_path / "u.toml"
    bad.write_text("[worker]\nthreads = 'many'\n")
    proc = subprocess.run([sys.executable, "-m", "utilitarian", "config", "check", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert f"{bad}: worker.threads: expected an integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_is_78(tmp_path, capsys):
    assert main(["config", "check", "--config", str(tmp_path / "nope.toml")]) == 78
    assert "file not found" in capsys.readouterr().err


def test_all_errors_reported_at_once(tmp_path):
    f = tmp_path / "u.toml"
    f.write_text("[broker]\nheartbeat = 'x'\nconection_timeout = 3\n[worker]\nthreads = 0\n")
    with pytest.raises(ConfigErrors) as err:
        load_config(str(f))
    text = str(err.value)
    assert "broker.heartbeat" in text and "worker.threads: must be >= 1" in text
    assert "did you mean 'connection_timeout'" in text


def test_defaults_without_any_file(monkeypatch):
    monkeypatch.delenv("UTILITARIAN_CONFIG", raising=False)
    config = load_config(None, env={})
    assert config.broker_url().startswith("amqp://")
    assert "amr-daily" in config.schedule and config.schedule["amr-daily"].cron == "0 0 * * *"


def test_env_var_is_second_in_search_order(tmp_path):
    f = tmp_path / "env.toml"
    f.write_text("[worker]\nthreads = 3\n")
    assert load_config(None, env={"UTILITARIAN_CONFIG": str(f)}).worker.threads == 3


def test_password_file_replaces_url_password_and_is_masked(tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t/with:chars\n")
    f = tmp_path / "u.toml"
    f.write_text(f'[broker]\nurl = "amqp://meter@rabbit.example:5672/prod"\npassword_file = "{pw}"\n')
    config = load_config(str(f))
    assert config.broker_url() == "amqp://meter:s3cr3t%2Fwith%3Achars@rabbit.example:5672/prod"
    assert main(["config", "check", "--config", str(f)]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out


def test_secret_in_url_is_masked_in_output(tmp_path, capsys):
    f = tmp_path / "u.toml"
    f.write_text('[broker]\nurl = "amqp://u:topsecret@h1:5672,h2:5673/v"\n')
    assert main(["config", "check", "--config", str(f)]) == 0
    out = capsys.readouterr().out
    assert "topsecret" not in out and "u:****@h1" in out


def test_schedule_override_merges_with_builtin(tmp_path):
    f = tmp_path / "u.toml"
    f.write_text('[schedule.amr-daily]\nenabled = false\n[schedule.amr-hourly]\ncron = "5 * * * *"\n')
    config = load_config(str(f))
    assert config.schedule["amr-daily"].enabled is False
    assert config.schedule["amr-hourly"].cron == "5 * * * *"
    assert config.schedule["amr-hourly"].task == "amr.dispatch_schedule"


def test_shipped_example_config_is_valid():
    example = pathlib.Path(__file__).parents[2] / "etc" / "utilitarian.toml"
    assert main(["config", "check", "--config", str(example)]) == 0


def test_example_documents_every_key():
    import dataclasses

    from utilitarian import config as c

    text = (pathlib.Path(__file__).parents[2] / "etc" / "utilitarian.toml").read_text()
    sections = {c.BrokerConfig: "broker", c.TLSConfig: "broker.tls", c.DatabaseConfig: "database",
                c.PathsConfig: "paths", c.WorkerConfig: "worker", c.PoolConfig: "pools",
                c.ProfileConfig: "workers", c.BeatConfig: "beat", c.ScheduleEntry: "schedule",
                c.TaskOptions: "tasks", c.LoggingConfig: "logging"}
    missing = [f"{name}.{f.name}" for cls, name in sections.items() for f in dataclasses.fields(cls)
               if f"{f.name} =" not in text and f.name not in ("pools", "tls")]
    assert missing == []


def test_credentials_directory_outside_a_unit_means_the_config_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "broker-password").write_text("from-disk\n")
    f = tmp_path / "u.toml"
    f.write_text('[broker]\nurl = "amqp://svc@h/"\npassword_file = "${CREDENTIALS_DIRECTORY}/broker-password"\n')
    assert load_config(str(f)).broker_url() == "amqp://svc:from-disk@h/"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker-password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_config(str(f)).broker_url() == "amqp://svc:from-systemd@h/"
