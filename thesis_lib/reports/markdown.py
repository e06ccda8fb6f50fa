"""The Markdown the report templates write: one door for run values (`escape_markdown`) and a few building blocks.

A report shows strings a run provides (run names, config values, device names, error messages,
log lines, metric and class names) next to Markdown the template writes. Every such value goes
through `escape_markdown`, so `<script>alert(1)</script>` or `**x**|y` reads as the text it is in
report.md, in the notebook and in report.html: what could open an HTML tag or entity is
entity-escaped, Markdown punctuation backslash-escaped, line breaks folded (a value stays on its line, in its table cell); with
`code=True` it becomes an inline code span and with `code="<language>"` a fenced block, whose
fences are longer than any backtick run inside. The other helpers take Markdown the template
composed (values already escaped) or numbers, which they format themselves.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePath
from typing import Any, Iterable, Optional, Sequence, Union
from urllib.parse import quote

__all__ = ["escape_markdown", "num", "count", "megabytes", "table", "bullets", "image", "frame_table", "MISSING"]

MISSING = "n/a"  # what a report shows for a number or setting the run does not have
# What could start markup in running text (CommonMark, as mistune and GitHub read it): a backslash,
# code, emphasis, links, table pipes, strike-through; "_" only where it is not inside a word
# (intraword "_" never emphasises); "<" before anything but a space (a tag, comment or autolink);
# "&" before a name or "#" (an entity).
_INLINE = re.compile(r"[\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|<(?!\s|$)|&(?=[A-Za-z#])")
_ENTITIES = {"<": "&lt;", "&": "&amp;"}
# ... and at the start of a line: block quotes, headings, list items, rules and setext underlines.
_LINE_START = re.compile(r"^(\s*)(>|[#+\-=](?=[\s#+\-=]|$)|\d{1,9}[.)](?=\s|$))")
_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def escape_markdown(value: Any, *, code: Union[bool, str] = False) -> str:
    """Any value a run provides, as Markdown that shows exactly its text; `None` shows as "n/a".

    Args:
        value: a string, number, path, or anything with a `str()`.
        code: False: running text (HTML entities, Markdown punctuation escaped, line breaks folded
            into spaces); True: an inline code span; a language name ("yaml", "text"): a fenced
            code block keeping the lines (nothing inside a code span or block is interpreted).

    Returns:
        The Markdown.
    """
    if value is None:
        return MISSING
    text = str(value)
    if code is True:
        return _code_span(_BREAKS.sub(" ", text))
    if code:
        return _fenced(text, str(code))
    text = _INLINE.sub(lambda m: _ENTITIES.get(m.group(), "\\" + m.group()), _BREAKS.sub(" ", text))
    return _LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text)


def num(value: Optional[float], spec: str = ".4g") -> str:
    """A number in format `spec`; "n/a" when missing or not finite."""
    if value is None or _is_nan(value):
        return MISSING
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING
    return format(value, spec)


def count(value: Optional[int]) -> str:
    """An integer with thousands separators ("6,000"); "n/a" when missing."""
    return MISSING if value is None or _is_nan(value) else f"{int(value):,}"


def megabytes(value: Optional[float]) -> str:
    """"1,234 MB"; "n/a" when missing."""
    return MISSING if value is None or _is_nan(value) else f"{value:,.0f} MB"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table of Markdown cells (escape run values first); None cells show "n/a", numbers as str()."""
    def cell(value: Any) -> str:
        return MISSING if value is None else _BREAKS.sub(" ", str(value))

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def bullets(items: Iterable[str]) -> str:
    """A bullet list, one Markdown item per entry."""
    return "\n".join(f"- {item}" for item in items)


def image(alt: str, path: Union[str, PurePath]) -> str:
    """An image link: `alt` is escaped, `path` (relative to the Markdown file) URL-quoted with forward slashes."""
    return f"![{escape_markdown(alt)}]({quote(PurePath(path).as_posix())})"


def frame_table(frame: Any, *, digits: int = 4) -> str:
    """A pandas DataFrame as a Markdown table: headers and text escaped, floats rounded to `digits`, NaN as "n/a".

    A named or non-default index (a grid's row axis) becomes the first column; a plain 0..n-1 index is left out.
    """
    import pandas as pd  # only the sweep template hands DataFrames over; the run report needs no pandas here

    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    header = [escape_markdown(column) for column in frame.columns]
    rows = [[_frame_cell(value, digits) for value in row] for row in frame.itertuples(index=False, name=None)]
    return table(header, rows)


def _frame_cell(value: Any, digits: int) -> str:
    """One DataFrame value as Markdown."""
    if value is None or _is_nan(value):
        return MISSING
    if isinstance(value, float):
        return str(round(value, digits))
    if isinstance(value, (bool, int)) or hasattr(value, "dtype"):  # numpy scalars print as numbers
        return escape_markdown(value.item() if hasattr(value, "item") else value)
    return escape_markdown(value)


def _is_nan(value: Any) -> bool:
    """NaN of any float type (pandas' NA included); False for everything that is not a number."""
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def _code_span(text: str) -> str:
    """An inline code span whose backtick fence is longer than any run of backticks in `text`."""
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fenced(text: str, language: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside `text`."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)
