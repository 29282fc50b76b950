"""utilitarian.entry_points reads entry_points.txt itself instead of importing importlib.metadata
(a start-up cost): it must give importlib.metadata's answer, group by group and in the same order,
for this environment and for the shapes a site's installation may have."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from utilitarian import entry_points


def reference(path: list[str]) -> list[tuple[str, str, str, str]]:
    """importlib.metadata's view: every group's entry points, the first distribution of a name winning."""
    found, seen = [], set()
    for dist in importlib.metadata.distributions(path=path):
        key = dist._normalized_name
        if key in seen:
            continue
        seen.add(key)
        found += [(ep.group, ep.name, ep.value, dist.name) for ep in dist.entry_points]
    return found


def by_group(rows) -> dict[str, list]:
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(tuple(row))
    return groups


def test_the_installed_environment_reads_the_same():
    mine = entry_points.scan(sys.path)
    assert by_group(mine) == by_group(reference(sys.path))
    for group in ("utilitarian.tasks", "utilitarian.config", "console_scripts"):  # the public API too
        ours = [(ep.name, ep.value) for ep in mine if ep.group == group]
        assert ours == [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group)]


def test_edge_cases_read_the_same(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()

    def dist(where, stem, name, text, metadata="METADATA"):
        info = where / stem
        info.mkdir()
        (info / metadata).write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1\n\nName: not-this\n")
        if text is not None:
            (info / "entry_points.txt").write_text(text)

    dist(first, "Site_Pkg-1.0.dist-info", "Site.Pkg", "# a comment\n[utilitarian.tasks]\n  a =  site.a \n"
                                                      "b=site.b:obj.attr\n\n[console_scripts]\nsite = site.cli:main\n")
    dist(second, "site_pkg-2.0.dist-info", "site-pkg", "[utilitarian.tasks]\na = shadowed\n")  # hidden by the first
    dist(second, "other-0.1.dist-info", "other", "[utilitarian.config]\nx = other:X\n[utilitarian.tasks]\na = o.a\n")
    dist(second, "no_entry_points-1.dist-info", "no-entry-points", None)
    dist(second, "legacy-0.3.egg-info", "legacy", "[utilitarian.tasks]\nlegacy = legacy.tasks\n", "PKG-INFO")
    (second / "single_file-1.0.egg-info").write_text("Metadata-Version: 1.0\nName: single-file\n")
    path = [str(first), str(second), str(tmp_path / "absent")]

    mine = entry_points.scan(path)
    assert by_group(mine) == by_group(reference(path))
    assert ("utilitarian.tasks", "b", "site.b:obj.attr", "Site.Pkg") in mine
    assert not any(ep.value == "shadowed" for ep in mine)
    assert {ep.group for ep in entry_points.scan(path, groups=("utilitarian.",))} == {
        "utilitarian.tasks", "utilitarian.config"}


def test_an_archive_on_the_path_is_left_to_importlib_metadata(tmp_path, monkeypatch):
    import zipfile

    archive = tmp_path / "site.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\nVersion: 1.0\n")
        z.writestr("zipped-1.0.dist-info/entry_points.txt", "[utilitarian.tasks]\nz = zipped.tasks\n")
    found = entry_points.scan([str(archive)])
    assert [(ep.group, ep.name, ep.value, ep.distribution) for ep in found] == [
        ("utilitarian.tasks", "z", "zipped.tasks", "zipped")]


@pytest.mark.parametrize("text, pairs", [
    ("[g]\nname = value = more\n", [("g", "name", "value = more")]),
    ("orphan = before any group\n[g]\n#x = y\n  [h]  \nn=v\n", [("h", "n", "v")]),
])
def test_parse(text, pairs):
    assert entry_points.parse(text) == pairs
