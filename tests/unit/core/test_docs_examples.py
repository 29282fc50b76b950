"""The complete examples in docs/writing-a-task.md and docs/writing-an-environment.md are the
files of examples/site_plugin, which tests/integration/amr_pipeline/test_site_plugin.py installs
and runs: a code block that names a file must equal it, so the docs cannot drift from what runs."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"```[a-z]*\n# file: (\S+)\n(.*?)```", re.S)


@pytest.mark.parametrize("doc, expected", [("writing-a-task.md", 2), ("writing-an-environment.md", 4)])
def test_doc_examples_are_the_files_the_tests_run(doc, expected):
    blocks = BLOCK.findall((ROOT / "docs" / doc).read_text(encoding="utf-8"))
    assert len(blocks) == expected
    for path, text in blocks:
        assert (ROOT / path).read_text(encoding="utf-8") == text, f"{doc}: {path} differs from the file"
