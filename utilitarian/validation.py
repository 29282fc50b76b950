"""The one start-up validation of a loaded config: `config check`, `worker` and `beat` all call
`validate()`, so what `config check` accepts every process accepts and what a process refuses at
start `config check` refuses (issue 11 item 6: a schedule naming an unknown task, a database URL
no store can open and a broken IPv6 broker URL passed `config check` and failed later).

`load_config` already bound every key, type and range; this adds what needs imports: the task
registry (task modules, `[tasks]` names, schedule entries' tasks), the broker settings and the
plugins' `check_config` rules (AMR's database URL). Static only: nothing connects anywhere.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from utilitarian.errors import ConfigError, ConfigErrors


def validate(config, modules: Iterable[str] = (), *, profiles: Iterable[str] | None = ()):
    """The task Registry for this config plus `modules` (a worker's -I), or ConfigErrors (exit 78)
    listing every problem found. `profiles` names the `[workers.NAME]` tables whose imports this
    process needs (a worker: its own profile; beat: none); None means every profile, which is what
    `config check` asks, so it refuses whatever any process started on the file would refuse. A
    profile's unimportable site module stops that profile's worker, never the beat or the others
    (their units may run with another PYTHONPATH)."""
    from utilitarian.broker.connection import settings_from_config
    from utilitarian.plugins import config_sections
    from utilitarian.tasks import Registry

    errors: list[ConfigError] = []
    base = _collect(errors, lambda: Registry.for_config(config), config, "worker.imports")
    errors += check_profile_imports(config, profiles)
    if base is not None and config.schedule:
        # The same check beat makes before it fires anything (against the same registry); beat's
        # modules are imported only when there is a schedule to check (a worker rarely needs them).
        from utilitarian.beat.schedule import entries_from_config

        _collect(errors, lambda: entries_from_config(config, base), config, "schedule")
    _collect(errors, lambda: settings_from_config(config), config, "broker.url")
    for section in config_sections().values():
        if section.check_config is not None:
            errors += section.check_config(config)
    if errors:
        raise ConfigErrors(errors)
    modules = tuple(modules)
    return Registry.for_config(config, modules) if modules else base


def check_profile_imports(config, names: Iterable[str] | None = None) -> list[ConfigError]:
    """Each `[workers.NAME] imports` module of the named profiles (None: all) must import: the
    worker started with that profile (a systemd instance) would refuse to start otherwise."""
    errors = []
    wanted = None if names is None else set(names)
    for name, profile in sorted(config.workers.items()):
        if wanted is not None and name not in wanted:
            continue
        for module in profile.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                errors.append(ConfigError(f"cannot import task module {module!r}: {exc}", file=config.source,
                                          key=f"workers.{name}.imports"))
    return errors


def _collect(errors: list[ConfigError], check, config, key: str):
    """check()'s value, or None with its ConfigError(s) appended to `errors`."""
    try:
        return check()
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    except ConfigError as exc:
        errors.append(exc)
    except ValueError as exc:  # Registry.add: one task name defined by two modules
        errors.append(ConfigError(str(exc), file=config.source, key=key))
    return None
