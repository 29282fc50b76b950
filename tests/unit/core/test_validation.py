"""utilitarian.validation.validate, the one start-up check of `config check`, worker and beat: it
reports every problem of a file at once, and what it returns is the registry the process runs
with (the process-wide agreement over the corpus is tests/integration/test_config_agreement.py)."""

from __future__ import annotations

import pytest

from utilitarian.config import load_config
from utilitarian.errors import ConfigErrors
from utilitarian.validation import validate


def test_every_problem_at_once(tmp_path):
    path = tmp_path / "u.toml"
    path.write_text('[database]\nurl = "mysql://x"\n'
                    '[schedule.nightly]\ncron = "0 2 * * *"\ntask = "utilitarian.pong"\n'
                    '[workers.daily]\nimports = ["no_such_site_module"]\n'
                    '[[workers.daily.pools]]\nqueues = ["amr.scheduled.daily"]\n')
    config = load_config(str(path))
    with pytest.raises(ConfigErrors) as err:
        validate(config, profiles=None)  # config check: every profile
    keys = sorted(e.key for e in err.value.errors)
    assert keys == ["database.url", "schedule.nightly.task", "workers.daily.imports"]
    assert all(e.file == str(path) for e in err.value.errors)
    # beat and the other profiles' workers do not need the daily profile's site module
    with pytest.raises(ConfigErrors) as err:
        validate(config)
    assert sorted(e.key for e in err.value.errors) == ["database.url", "schedule.nightly.task"]
    with pytest.raises(ConfigErrors) as err:
        validate(config, profiles=["daily"])
    assert "workers.daily.imports" in [e.key for e in err.value.errors]


def test_the_registry_is_the_processes_and_extra_modules_never_change_the_verdict(tmp_path):
    path = tmp_path / "u.toml"
    path.write_text('[schedule.nightly]\ncron = "0 2 * * *"\ntask = "utilitarian.ping"\n')
    config = load_config(str(path))
    base = validate(config)
    assert "utilitarian.ping" in base and "amr.dispatch_schedule" in base   # built-ins and entry points
    with_extra = validate(config, ["support.worker_tasks"])                # a worker's -I
    assert set(base.names()) < set(with_extra.names())
