"""report.html: the report's Markdown as one inert, self-contained HTML page.

A report is a document a supervisor opens from an e-mail, on any machine, offline. So the page
is built here rather than by nbconvert's HTML templates, which carry require.js and MathJax from
a CDN and scripts of their own, and whose Markdown filter split the config's `<details>` from
its YAML. What the page is made of:

- The Markdown the template cells `show` (values from the run already passed through
  `escape_markdown`), turned into HTML by mistune, the Markdown engine nbconvert itself uses.
  Raw HTML in that Markdown keeps only bare `<details>`, `</details>`, `<summary>` and
  `</summary>` tags (what the templates write); anything else, attributes included, is shown as
  text, so no string a run provides can become a tag even if a template forgot to escape it.
- Images are embedded as data URIs, read from files inside the report's directory (PNG, JPEG,
  GIF, WebP only: an SVG can hold script); a missing one becomes a line of text saying so.
- A Content-Security-Policy that allows no script, no connection and no remote resource (only
  inline styles and data: images) as a second line of defence, and `check_inert`, which reads
  the finished page back with the standard library's HTML parser and refuses it (ReportError)
  when it holds any tag or attribute outside a short allow-list. The page needs no script to be
  read: the config folds with a native `<details>`.
"""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Optional, Union
from urllib.parse import unquote

import mistune

from ..errors import ReportError
from .pdf import PRINT_CSS

__all__ = ["CONTENT_SECURITY_POLICY", "markdown_to_html", "report_page", "check_inert"]

CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                           "base-uri 'none'; form-action 'none'")
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".webp": "image/webp"}
_STRUCTURE_TAG = re.compile(r"(</?(?:details|summary)>)", re.IGNORECASE)
# A table cell holding only a number (with thousands separators, a sign, a unit or a percent):
# right-aligned, so a column of numbers lines up on its digits.
_NUMERIC_CELL = re.compile(r"^[−\-+]?[\d,]*\.?\d+(?:e[−\-+]?\d+)?(?:\s?(?:%|MB|W|J|s|samples/s))?$", re.IGNORECASE)

_BODY_CELL = re.compile(r'<td( class="num")?>(.*?)</td>', re.DOTALL)
_MISSING_CELLS = frozenset({"n/a", "–", "-", ""})

_STYLE = """
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 15px; line-height: 1.5;
       color: #1d1d1f; background: #fff; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.4em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; }
h2 { font-size: 1.3em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #e5e5e5; padding-bottom: 0.15em; }
h3 { font-size: 1.1em; margin: 1.2em 0 0.4em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-variant-numeric: tabular-nums;
        display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #d5d5d5; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
pre, code { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace; font-size: 0.88em; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: 10px 12px;
      overflow-x: auto; line-height: 1.35; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
pre code { background: none; padding: 0; }
details { margin: 0.6em 0; }
summary { cursor: pointer; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.missing-image { color: #a33; font-style: italic; }
"""


def markdown_to_html(markdown: str, *, base_dir: Union[str, Path]) -> str:
    """Report Markdown as an HTML fragment: tables, code blocks, images embedded from `base_dir`.

    Args:
        markdown: the Markdown the template cells showed.
        base_dir: the directory relative image links resolve against (the report's directory);
            an image outside it is not embedded.

    Returns:
        The HTML of the body.
    """
    renderer = _ReportRenderer(Path(base_dir))
    convert = mistune.create_markdown(renderer=renderer, plugins=["table", "strikethrough"])
    return str(convert(markdown))


def report_page(markdown: str, *, title: str, base_dir: Union[str, Path]) -> str:
    """The whole report.html: head (charset, CSP, styles, title) and the report as its body; checked inert.

    Raises:
        ReportError: the page would hold a tag or attribute outside the allow-list (`check_inert`).
    """
    body = markdown_to_html(markdown, base_dir=base_dir)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}{PRINT_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )
    check_inert(page)
    return page


def check_inert(page: str) -> None:
    """Refuse a page holding anything that could run or load: a tag or attribute outside the allow-list.

    Allowed: the document's structure, text markup, tables, lists, code, `<details>`, links, and
    images whose source is a data: URI; attributes `href` (not javascript:), `src` (data:image/
    only), `alt`, `title`, `class`, `lang`, `open`, and the head's meta attributes. No event
    handler, no `style` attribute, no script, frame, object, form or external stylesheet.

    Raises:
        ReportError: naming the first offending tag or attribute and its line.
    """
    checker = _InertChecker()
    checker.feed(page)
    checker.close()
    if checker.problem:
        raise ReportError(f"report.html was not written: it would hold {checker.problem}; a value from the run "
                          "reached the page unescaped (a bug in the report template: please report it)")


class _ReportRenderer(mistune.HTMLRenderer):
    """mistune's HTML renderer with the report's rules: structure tags only, embedded images, aligned numbers."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(escape=False)
        self.base_dir = base_dir

    def block_html(self, raw: str) -> str:
        return _structure_tags_only(raw) + "\n"

    def inline_html(self, raw: str) -> str:
        return _structure_tags_only(raw)

    def image(self, text: str, url: str, title: Optional[str] = None) -> str:
        return _embedded_image(self.base_dir, html.unescape(text), url)

    def table_cell(self, text: str, align: Optional[str] = None, head: bool = False) -> str:
        tag = "th" if head else "td"
        numeric = not head and _NUMERIC_CELL.match(html.unescape(text).strip())
        opening = f'<{tag} class="num">' if numeric else f"<{tag}>"
        return f"  {opening}{text}</{tag}>\n"

    def table(self, text: str) -> str:
        return "<table>\n" + _align_numeric_columns(text) + "</table>\n"


def _align_numeric_columns(table: str) -> str:
    """Keep a cell right-aligned only when its whole column holds numbers (a missing "n/a" aside):
    a Setting/Value table whose values are mostly words stays left-aligned throughout."""
    rows = re.split(r"(?=<tr>)", table)
    cells = [list(_BODY_CELL.finditer(row)) for row in rows]
    columns: dict[int, bool] = {}
    for row in cells:
        for i, cell in enumerate(row):
            if cell.group(2).strip() not in _MISSING_CELLS:
                columns[i] = columns.get(i, True) and bool(cell.group(1))
    out = []
    for row, row_cells in zip(rows, cells):
        for i, cell in reversed(list(enumerate(row_cells))):
            opening = '<td class="num">' if columns.get(i) else "<td>"
            row = row[:cell.start()] + opening + cell.group(2) + "</td>" + row[cell.end():]
        out.append(row)
    return "".join(out)


def _structure_tags_only(raw: str) -> str:
    """Raw HTML from the Markdown: bare details/summary tags kept, everything else escaped to text."""
    return "".join(part.lower() if _STRUCTURE_TAG.fullmatch(part) else html.escape(part, quote=False)
                   for part in _STRUCTURE_TAG.split(raw))


def _embedded_image(base_dir: Path, alt: str, url: str) -> str:
    """An <img> with the file's bytes as a data URI; text saying why when it cannot be embedded."""
    name = unquote(url)
    missing = f'<span class="missing-image">[figure {html.escape(alt)} not embedded: {{}}]</span>'
    if re.match(r"^[a-z][a-z0-9+.-]*:", name, re.IGNORECASE):
        return missing.format("not a file in the report directory")
    base = base_dir.resolve()
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        return missing.format("outside the report directory")
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        return missing.format(f"{html.escape(path.suffix or 'no suffix')} is not an embeddable raster image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return missing.format(html.escape(f"{type(exc).__name__}: {exc.strerror or exc}"))
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{mime};base64,{encoded}" alt="{html.escape(alt)}">'


_ALLOWED_TAGS = frozenset({
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr",
    "em", "strong", "del", "code", "pre", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th",
    "td", "details", "summary", "a", "img", "span", "div",
})
_ALLOWED_ATTRIBUTES = frozenset({"href", "src", "alt", "title", "class", "lang", "open", "start", "id"})
_META_ATTRIBUTES = frozenset({"charset", "http-equiv", "content", "name"})


class _InertChecker(HTMLParser):
    """Walks a page and keeps the first tag or attribute outside the allow-list."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problem: Optional[str] = None
        self._styles = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._check(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._check(tag, attrs)

    def _check(self, tag: str, attrs: Iterable[tuple[str, Optional[str]]]) -> None:
        if self.problem:
            return
        line = self.getpos()[0]
        if tag not in _ALLOWED_TAGS:
            self.problem = f"a <{tag}> tag (line {line})"
            return
        if tag == "style":
            self._styles += 1
            if self._styles > 1:
                self.problem = f"a second <style> tag (line {line})"
                return
        allowed = _META_ATTRIBUTES if tag == "meta" else _ALLOWED_ATTRIBUTES
        for name, value in attrs:
            value = (value or "").strip()
            if name not in allowed:
                self.problem = f"a {name}= attribute on <{tag}> (line {line})"
            elif name == "src" and not (tag == "img" and value.startswith("data:image/")):
                self.problem = f"a <{tag}> loading {value[:60]!r} (line {line}); only data:image/ sources are allowed"
            elif name == "href" and re.match(r"^\s*(javascript|vbscript|data):", value, re.IGNORECASE):
                self.problem = f"a link to {value[:60]!r} (line {line})"
            elif tag == "meta" and name == "http-equiv" and value.lower() not in ("content-security-policy",):
                self.problem = f"a <meta http-equiv={value!r}> (line {line})"
            if self.problem:
                return
