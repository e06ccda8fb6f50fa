"""Where the notebooks shipped with thesis-lib live: a source checkout, or an installed copy.

An editable install (the README's) reads them from the checkout's `report_templates/` and
`notebooks/`; a regular `pip install` copies them to `<prefix>/share/thesis-lib/` (see
pyproject.toml's data-files), which is the fallback.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from .errors import ThesisLibError

__all__ = ["shipped_notebook"]

_CHECKOUT = Path(__file__).resolve().parents[1]


def _candidates(folder: str, name: str) -> list[Path]:
    prefixes = [Path(sysconfig.get_path("data")), Path(sys.prefix)]
    return [_CHECKOUT / folder / name] + [p / "share" / "thesis-lib" / folder / name for p in prefixes]


def shipped_notebook(folder: str, name: str, *, must_exist: bool = True) -> Path:
    """The path of `<folder>/<name>` (e.g. "report_templates", "run_report.ipynb").

    With `must_exist=False` (module constants, resolved at import) a missing notebook gives the
    checkout path, and the error comes when it is used.

    Raises:
        ThesisLibError: the notebook is in none of the places an install puts it (all are named).
    """
    candidates = _candidates(folder, name)
    for path in candidates:
        if path.is_file():
            return path
    if not must_exist:
        return candidates[0]
    tried = ", ".join(str(p) for p in dict.fromkeys(candidates))
    raise ThesisLibError(f"{folder}/{name} not found; looked in {tried} (reinstall thesis-lib, or pass the path)")
