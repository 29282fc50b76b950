"""The seam through which installed packages extend utilitarian: Python entry points, one group
per kind of extension. Our own AMR package registers through it exactly as a site's package does,
so the framework core (config, tasks, app, supervisor, broker) never imports `utilitarian.amr`.

Groups (declare them in the extending package's `pyproject.toml`):
  utilitarian.config        NAME = "pkg.module:SECTION"   a top-level TOML table `[NAME]`, a ConfigSection
  utilitarian.tasks         NAME = "pkg.tasks_module"     a module of @task functions every worker imports
  utilitarian.idle_probes   NAME = "pkg.module:func"      `func(app, queues) -> bool`: work for these queues
                            is still due later (`--exit-when-idle` waits for it; supervisor/idle_probe.py)
  utilitarian.dashboard_panels NAME = "pkg.module:func" `func(config, now) -> dict`: a panel of the
                            status page (`utilitarian dashboard`; docs/plugins.md gives its shape)
  utilitarian.metrics_collectors NAME = "pkg.module:func" `func(app, queues)`: set utilitarian.telemetry
                            gauges from a slow source (a store) every 15 s, on a thread of its own
  utilitarian.environments  NAME = "pkg.env_module"       an execution environment (module with CALLS, PROTOCOLS)
  utilitarian.meter_types   NAME = "pkg.module:LOADER"    register maps: a callable returning {name: MeterType}
  utilitarian.read_schemes  NAME = "pkg.module:PROTOCOL"  meter URL schemes of one protocol (a UrlProtocol)
The last three are AMR's: this module only finds and imports them; `utilitarian.amr` checks what they
hold (docs/plugins.md).
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

from utilitarian.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_GROUP = "utilitarian.config"
TASKS_GROUP = "utilitarian.tasks"
IDLE_PROBES_GROUP = "utilitarian.idle_probes"
DASHBOARD_PANELS_GROUP = "utilitarian.dashboard_panels"
METRICS_COLLECTORS_GROUP = "utilitarian.metrics_collectors"
ENVIRONMENTS_GROUP = "utilitarian.environments"
METER_TYPES_GROUP = "utilitarian.meter_types"
READ_SCHEMES_GROUP = "utilitarian.read_schemes"


@dataclass(frozen=True)
class ConfigSection:
    """A top-level table a plugin adds to the TOML file.

    `schema` is a frozen dataclass bound like the core sections (unknown keys, types, ranges and
    checks reported with their key path), or None for a free-form table kept as a dict.
    `check(value, file)` returns further ConfigErrors (cross-field rules); it runs for `config
    check` and every process alike, because both load the file through the same code.
    `check_config(config)` returns ConfigErrors about what the plugin does with the rest of the
    file (AMR: the `[database] url` its store opens); `utilitarian.validation` runs it at `config
    check` and at the start of every process.
    """

    schema: type | None
    check: Callable[[Any, str | None], list[ConfigError]] | None = None
    check_config: Callable[[Any], list[ConfigError]] | None = None
    default: Callable[[], Any] = dict  # the value when the file has no such table (schema None)


@dataclass(frozen=True)
class Plugin:
    name: str
    value: str  # "module" or "module:attribute", as declared
    distribution: str


def declared(group: str) -> tuple[Plugin, ...]:
    """Entry points of `group` in installed distributions, sorted by name (a stable order)."""
    return _declared(group, tuple(sys.path))


@functools.lru_cache(maxsize=None)
def _declared(group: str, path: tuple[str, ...]) -> tuple[Plugin, ...]:
    found: dict[str, Plugin] = {}
    for ep in _ours(path):
        if ep.group != group:
            continue
        if ep.name in found and found[ep.name].value != ep.value:
            raise ConfigError(f"entry point {group}:{ep.name} is declared twice (by {found[ep.name].distribution} "
                              f"and {ep.distribution}); uninstall one of them")
        found[ep.name] = Plugin(ep.name, ep.value, ep.distribution)
    return tuple(sorted(found.values(), key=lambda p: p.name))


@functools.lru_cache(maxsize=None)
def _ours(path: tuple[str, ...]) -> tuple:
    """Every `utilitarian.*` entry point on `path`: one scan for all groups (keyed by sys.path, so
    a directory put on it is seen)."""
    from utilitarian.entry_points import scan

    return tuple(scan(path, groups=("utilitarian.",)))


def load(plugin: Plugin, group: str) -> Any:
    """Import what the entry point names; a broken plugin is a configuration error naming it."""
    module_name, _, attr = plugin.value.partition(":")
    try:
        obj = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
    except Exception as exc:  # ImportError, AttributeError, or whatever the module raises at import
        raise ConfigError(f"plugin {group}:{plugin.name} from {plugin.distribution} ({plugin.value}) "
                          f"cannot be loaded: {type(exc).__name__}: {exc}") from None
    return obj


@functools.lru_cache(maxsize=None)
def config_sections() -> dict[str, ConfigSection]:
    sections = {}
    for plugin in declared(CONFIG_GROUP):
        section = load(plugin, CONFIG_GROUP)
        if not isinstance(section, ConfigSection):
            raise ConfigError(f"plugin {CONFIG_GROUP}:{plugin.name} ({plugin.value}) is not a ConfigSection")
        sections[plugin.name] = section
    return sections


def task_modules() -> list[str]:
    """Module names of the `utilitarian.tasks` group (imported by the task registry)."""
    return [plugin.value.partition(":")[0].strip() for plugin in declared(TASKS_GROUP)]


def modules(group: str) -> dict[str, str]:
    """{name: module name} of a group whose entry points name modules, without importing them
    (execution environments: pymodbus and friends load only when a poll needs them)."""
    return {plugin.name: plugin.value.partition(":")[0].strip() for plugin in declared(group)}


@functools.lru_cache(maxsize=None)
def loaded(group: str) -> dict[str, Any]:
    """{name: object} of a group, each entry point imported once per process."""
    return {plugin.name: load(plugin, group) for plugin in declared(group)}


def warm() -> None:
    """Find every group's entry points now. A pre-fork master calls it so that its children
    inherit the result: otherwise each child scans every installed distribution's metadata once
    per thread that asks first (lru_cache does not hold back concurrent misses: 100 poll threads
    starting together scanned ~40 times per child, about 1 CPU-second). A duplicate entry point is
    left for the code that uses the group to report. (Since one scan serves every group, this
    costs the master one scan.)"""
    for group in (CONFIG_GROUP, TASKS_GROUP, IDLE_PROBES_GROUP, ENVIRONMENTS_GROUP, METER_TYPES_GROUP,
                  READ_SCHEMES_GROUP):
        try:
            declared(group)
        except ConfigError:
            pass


def clear_caches() -> None:
    """Forget what was found (tests that install a package at run time)."""
    _declared.cache_clear()
    _ours.cache_clear()
    config_sections.cache_clear()
    loaded.cache_clear()


def idle_probes() -> list[tuple[str, Callable[..., bool]]]:
    """(name, probe) of the `utilitarian.idle_probes` group."""
    return callables(IDLE_PROBES_GROUP)


def dashboard_panels() -> list[tuple[str, Callable[..., dict]]]:
    """(name, panel) of the `utilitarian.dashboard_panels` group."""
    return callables(DASHBOARD_PANELS_GROUP)


def callables(group: str) -> list[tuple[str, Callable]]:
    """(name, function) of every plugin of `group`; one that is not callable is a ConfigError."""
    found = []
    for plugin in declared(group):
        func = load(plugin, group)
        if not callable(func):
            raise ConfigError(f"plugin {group}:{plugin.name} ({plugin.value}) is not callable")
        found.append((plugin.name, func))
    return found
