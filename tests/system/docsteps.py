"""The install, upgrade and uninstall steps of docs/operations.md as scripts: every fenced bash block
that follows a `<!-- system-test: SECTION -->` marker, in page order. The `site` block holds only
`NAME=value` lines (the operator's values); the test replaces those values and nothing else."""

from __future__ import annotations

import pathlib
import re
import shlex

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_BLOCK = re.compile(r"<!--\s*system-test:\s*([\w-]+)\s*-->\s*\n```bash\n(.*?)\n```", re.S)
_ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S*)$")


def blocks(text: str | None = None) -> dict[str, list[str]]:
    text = DOC.read_text(encoding="utf-8") if text is None else text
    found: dict[str, list[str]] = {}
    for section, body in _BLOCK.findall(text):
        found.setdefault(section, []).append(body)
    return found


def site_values(text: str | None = None) -> dict[str, str]:
    """The documented example values of the site block (and a check that it holds nothing else)."""
    (site,) = blocks(text)["site"]
    values = {}
    for line in site.splitlines():
        m = _ASSIGN.match(line.strip())
        if not m:
            raise ValueError(f"the site block may hold only NAME=value lines, not {line!r}")
        values[m.group(1)] = m.group(2)
    return values


def script(section: str, site: dict[str, str], text: str | None = None) -> str:
    """The site block with the given values, then the section's blocks verbatim."""
    documented = site_values(text)
    if set(site) != set(documented):
        raise ValueError(f"site values {sorted(site)} do not match the documented {sorted(documented)}")
    head = "".join(f"{name}={shlex.quote(value)}\n" for name, value in site.items())
    parts = blocks(text).get(section)
    if not parts:
        raise ValueError(f"docs/operations.md has no block marked system-test: {section}")
    return "# site values (the test's own)\n" + head + "".join(
        f"\n# --- docs/operations.md, system-test: {section}, block {i + 1}\n{body}\n"
        for i, body in enumerate(parts))
