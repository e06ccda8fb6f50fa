"""Shipped notebooks are found in a source checkout and in a regular install's share/ folder."""

from pathlib import Path

import pytest

from thesis_lib import shipped
from thesis_lib.errors import ThesisLibError


def test_checkout_copy_is_found():
    path = shipped.shipped_notebook("report_templates", "run_report.ipynb")
    assert path == Path(__file__).resolve().parents[1] / "report_templates" / "run_report.ipynb"


def test_installed_copy_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "_CHECKOUT", tmp_path / "no-checkout")
    monkeypatch.setattr(shipped.sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(shipped.sysconfig, "get_path", lambda name: str(tmp_path / "venv"))
    installed = tmp_path / "venv" / "share" / "thesis-lib" / "report_templates" / "run_report.ipynb"
    with pytest.raises(ThesisLibError, match=r"report_templates/run_report.ipynb not found; looked in .*no-checkout"):
        shipped.shipped_notebook("report_templates", "run_report.ipynb")
    assert shipped.shipped_notebook("report_templates", "run_report.ipynb", must_exist=False).parent.name == "report_templates"
    installed.parent.mkdir(parents=True)
    installed.write_text("{}")
    assert shipped.shipped_notebook("report_templates", "run_report.ipynb") == installed
