"""The AMR entry-point groups' failure modes, with a package 'installed' on sys.path (module and
dist-info): a scheme or meter type claimed twice is a ConfigError naming both, a broken environment
is BadTaskCall naming the plugin (a Poll failed event, no retry), never a traceback."""

from __future__ import annotations

import sys
import textwrap

import pytest

from utilitarian import plugins
from utilitarian.amr.errors import BadTaskCall
from utilitarian.errors import ConfigError


@pytest.fixture
def install(tmp_path, monkeypatch):
    def make(name: str, module: str, entry_points: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(module))
        info = tmp_path / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        plugins.clear_caches()

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in [m for m in sys.modules if m.startswith("fake_")]:
        sys.modules.pop(name)
    plugins.clear_caches()


def test_a_scheme_claimed_twice_names_both_protocols(install):
    from utilitarian.amr.target import parse_meter_url

    install("fake_dlms", '''
        from utilitarian.amr.target import COMMON_PARAMS, UrlProtocol
        OTHER = UrlProtocol("otherdlms", {"dlms+tcp": "tcp"}, COMMON_PARAMS, "generic_dlms", default_port=1)
    ''', "[utilitarian.read_schemes]\notherdlms = fake_dlms:OTHER\n")
    with pytest.raises(ConfigError, match="'dlms\\+tcp' is declared by protocols 'dlms' and 'otherdlms'"):
        parse_meter_url("dlms+tcp://h")


def test_a_read_scheme_that_is_not_a_url_protocol(install):
    from utilitarian.amr.target import parse_meter_url

    install("fake_bad", "THING = 42\n", "[utilitarian.read_schemes]\nbad = fake_bad:THING\n")
    with pytest.raises(ConfigError, match="is not a UrlProtocol"):
        parse_meter_url("modbus+tcp://h")


def test_a_broken_environment_is_a_bad_task_call(install):
    from utilitarian.amr.environments import run_task_call
    from utilitarian.amr.target import parse_meter_url

    install("fake_env", "raise RuntimeError('half installed')\n",
            "[utilitarian.environments]\nbroken_env = fake_env\n")
    with pytest.raises(BadTaskCall) as info:
        run_task_call("broken_env", "read", parse_meter_url("modbus+tcp://h"), {})
    assert "fake_env" in info.value.message and "half installed" in info.value.message
    with pytest.raises(BadTaskCall, match="did you mean 'generic_mbus'"):
        run_task_call("generic_mbsu", "read_values", parse_meter_url("mbus+tcp://h:1?address=1"), {})


def test_a_meter_type_defined_twice(install):
    from utilitarian.amr.meter_types import load_registered_meter_types

    install("fake_types", '''
        from utilitarian.amr.meter_types import load_builtin_meter_types
        def load():
            return {"eastron_sdm630": load_builtin_meter_types()["eastron_sdm630"]}
    ''', "[utilitarian.meter_types]\nfake = fake_types:load\n")
    with pytest.raises(ConfigError, match="'eastron_sdm630' is defined by plugins 'builtin' and 'fake'"):
        load_registered_meter_types()
