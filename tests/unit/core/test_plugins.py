"""The plugin seam: the framework core never imports utilitarian.amr; AMR's `[amr]` and
`[meter_types]` tables and its task module arrive through entry points, and a package found on
sys.path with its own dist-info extends the config the same way."""

from __future__ import annotations

import ast
import pathlib
import sys
import textwrap

import pytest

import utilitarian
from utilitarian import plugins
from utilitarian.config import parse_config
from utilitarian.errors import ConfigErrors
from utilitarian.tasks import Registry

ROOT = pathlib.Path(utilitarian.__file__).parent
CORE = ["config.py", "config_schema.py", "tasks.py", "app.py", "plugins.py", "protocol.py", "errors.py",
        "queues.py", "batching.py", "supervisor", "broker", "beat"]


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_framework_core_never_imports_amr():
    offenders = []
    for name in CORE:
        target = ROOT / name
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            offenders += [f"{path.relative_to(ROOT)}: {mod}" for mod in _imports(path)
                          if mod.startswith("utilitarian.amr") or mod == "utilitarian.amr"]
    assert offenders == []


def test_amr_registers_through_entry_points():
    assert {"amr", "meter_types"} <= set(plugins.config_sections())
    assert "utilitarian.amr.tasks" in plugins.task_modules()
    config = parse_config({"amr": {"dispatch_batch_size": 50}})
    assert config.amr.dispatch_batch_size == 50
    assert "amr.execute_meter_task" in Registry.for_config(config).names()


def test_plugin_section_errors_carry_their_key_path():
    with pytest.raises(ConfigErrors) as info:
        parse_config({"amr": {"dispatch_batch_sise": 5}}, file="site.toml")
    assert "site.toml: amr.dispatch_batch_sise: unknown key" in str(info.value)
    with pytest.raises(ConfigErrors) as info:  # the section's own check, run after binding
        parse_config({"meter_types": {"bad name!": {}}}, file="site.toml")
    assert "site.toml: meter_types.bad name!: name must use" in str(info.value)


@pytest.fixture
def example_distribution(tmp_path, monkeypatch):
    """A separately 'installed' package: its module and dist-info on sys.path."""
    (tmp_path / "site_example.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from utilitarian.config_schema import setting
        from utilitarian.plugins import ConfigSection

        @dataclass(frozen=True)
        class Example:
            level: int = setting(1, min=0, max=9)

        SECTION = ConfigSection(Example)
    '''))
    info = tmp_path / "site_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: site-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[utilitarian.config]\nexample = site_example:SECTION\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.clear_caches()
    yield
    sys.modules.pop("site_example", None)
    plugins.clear_caches()


def test_a_site_package_adds_a_config_table(example_distribution):
    assert parse_config({"example": {"level": 7}}).example.level == 7
    assert parse_config({}).example.level == 1  # absent table: the defaults
    with pytest.raises(ConfigErrors) as info:
        parse_config({"example": {"level": 12}}, file="site.toml")
    assert "site.toml: example.level: must be <= 9, got 12" in str(info.value)


def test_an_unknown_top_level_table_is_still_refused():
    with pytest.raises(ConfigErrors) as info:
        parse_config({"exmple": {}}, file="site.toml")
    assert "site.toml: exmple: unknown key" in str(info.value)
