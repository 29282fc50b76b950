"""docs/meters.md lists every execution environment, task call and kwarg exactly as the code
declares them: the table is rendered from the Call declarations and compared here."""

from __future__ import annotations

import pathlib

from utilitarian.amr.environments import EXECUTION_TYPES, calls_of
from utilitarian.amr.environments.catalog import BEGIN, END, render_table

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "meters.md"


def test_the_docs_table_is_the_code():
    text = DOC.read_text()
    assert BEGIN in text and END in text, "docs/meters.md lost its task-calls markers"
    documented = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()
    assert documented == render_table(), (
        "docs/meters.md's task-calls table differs from the code; regenerate it with "
        "`python -m utilitarian.amr.environments.catalog` and paste it between the markers")


def test_every_call_and_kwarg_appears_in_the_docs():
    text = DOC.read_text()
    for etype in EXECUTION_TYPES:
        assert f"`{etype}`" in text
        for call in calls_of(etype).values():
            assert f"`{call.name}`" in text
            for param in call.params:
                assert f"`{param.name}`" in text
