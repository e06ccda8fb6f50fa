"""The public API: what each package's `__all__` offers is what the README's API table lists, and it imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_ROW = re.compile(r"^\| `(?P<module>thesis_lib[\w.]*)` \| (?P<names>.*?) \|")


def readme_api() -> dict[str, list[str]]:
    """The README's "Public API" table: module -> the names its row lists."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            rows[match["module"]] = re.findall(r"`([^`]+)`", match["names"])
    return rows


def test_the_readme_lists_every_package():
    packages = {"thesis_lib"} | {f"thesis_lib.{p.parent.name}" for p in (ROOT / "thesis_lib").glob("*/__init__.py")}
    assert packages <= set(readme_api()), f"packages missing from the README's API table: {packages - set(readme_api())}"


@pytest.mark.parametrize("module", sorted(readme_api()))
def test_readme_row_equals_the_module_all(module):
    imported = importlib.import_module(module)
    listed = readme_api()[module]
    assert len(listed) == len(set(listed)), f"{module}: a name is listed twice in the README"
    assert sorted(listed) == sorted(imported.__all__)
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.__all__ names {name}, which it does not define"


def test_the_table_parser_reads_a_row():
    assert _ROW.match("| `thesis_lib.facts` | `load_runs`, `read_events` |")["module"] == "thesis_lib.facts"
