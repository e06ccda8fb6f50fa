"""report.html as a page: inert (no script, no handler, no remote load), self-contained, readable.

The page is built by `thesis_lib.reports.html_page` from the Markdown the templates show; these
tests feed it Markdown directly, including raw HTML a template could let through by mistake, and
read the result back with the standard library's HTML parser.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest

from thesis_lib.errors import ReportError
from thesis_lib.reports.html_page import CONTENT_SECURITY_POLICY, check_inert, markdown_to_html, report_page
from thesis_lib.reports.markdown import escape_markdown, table

# A 1x1 PNG: enough for the embedding to be checked byte for byte.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "<iframe src=https://example.com></iframe>",
    '<details open ontoggle=alert(1)><summary>x</summary></details>',
    "<style>body{background:url(https://example.com/x.png)}</style>",
    "[click](javascript:alert(1))",
    "![remote](https://example.com/x.png)",
]


class _Elements(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def elements(page: str) -> list[tuple[str, dict]]:
    parser = _Elements()
    parser.feed(page)
    return parser.tags


@pytest.mark.parametrize("payload", PAYLOADS)
def test_raw_html_in_the_markdown_never_becomes_a_tag(payload, tmp_path):
    """A template that forgot `esc`: the page still holds no script, handler or remote load."""
    page = report_page(f"# Title\n\nvalue: {payload}\n\n| a | b |\n|---|---|\n| {payload} | 1 |\n\n{payload}\n",
                       title=payload, base_dir=tmp_path)
    for tag, attrs in elements(page):
        assert tag not in ("script", "iframe", "svg", "object", "embed", "link", "base", "form"), tag
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert tag != "img", attrs  # no image file was given: nothing may be loaded from the payload
        if tag == "a":
            assert not attrs.get("href", "").lower().startswith("javascript"), attrs
        if tag == "details":
            assert attrs == {}, attrs
    assert page.count("<style>") == 1  # ours, in the head


@pytest.mark.parametrize("payload", PAYLOADS)
def test_escaped_values_read_as_their_own_text(payload, tmp_path):
    """What `esc` hands over shows exactly the string, in running text, a table cell and a code block."""
    markdown = (f"text {escape_markdown(payload)}\n\n" + table(("k", "v"), [("x", escape_markdown(payload))])
                + "\n\n" + escape_markdown(payload, code="text"))
    page = report_page(markdown, title="t", base_dir=tmp_path)
    body = page.split("<main>", 1)[1]
    visible = _Text()
    visible.feed(body)
    assert visible.text.count(payload) == 3, visible.text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text = ""

    def handle_data(self, data):
        self.text += data


def test_the_page_declares_a_policy_that_allows_no_script_and_no_remote_load(tmp_path):
    page = report_page("# x", title="x", base_dir=tmp_path)
    assert f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">' in page
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "img-src data:" in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # default-src 'none' covers it: no script at all
    assert "http" not in page.lower().replace("http-equiv", "")  # no URL of any kind


@pytest.mark.parametrize("fragment, problem", [
    ("<script>alert(1)</script>", "a <script> tag"),
    ('<img src="https://example.com/x.png">', "loading 'https://example.com/x.png'"),
    ('<img src="data:image/png;base64,AAAA" onerror="alert(1)">', "a onerror= attribute on <img>"),
    ('<a href="javascript:alert(1)">x</a>', "a link to 'javascript:alert(1)'"),
    ('<p style="background:url(https://x)">x</p>', "a style= attribute on <p>"),
    ('<meta http-equiv="refresh" content="0;url=https://x">', "<meta http-equiv='refresh'>"),
    ("<style>x</style><style>y</style>", "a second <style> tag"),
    ("<iframe></iframe>", "a <iframe> tag"),
])
def test_check_inert_refuses_what_could_run_or_load(fragment, problem):
    with pytest.raises(ReportError, match="report.html was not written") as caught:
        check_inert(f"<html><body>{fragment}</body></html>")
    assert problem in str(caught.value)


def test_images_are_embedded_from_inside_the_report_directory_only(tmp_path):
    report_dir = tmp_path / "report"
    (report_dir / "figures").mkdir(parents=True)
    (report_dir / "figures" / "a b.png").write_bytes(PNG)
    (tmp_path / "outside.png").write_bytes(PNG)
    (report_dir / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    html = markdown_to_html("![fig](figures/a%20b.png)\n\n![out](../outside.png)\n\n![svg](drawing.svg)\n\n"
                            "![gone](missing.png)\n\n![abs](file:///etc/passwd)\n", base_dir=report_dir)
    images = [attrs for tag, attrs in elements(html) if tag == "img"]
    assert images == [{"src": "data:image/png;base64," + base64.b64encode(PNG).decode(), "alt": "fig"}]
    assert "[figure out not embedded: outside the report directory]" in html
    assert "[figure svg not embedded: .svg is not an embeddable raster image]" in html
    assert "[figure gone not embedded: FileNotFoundError: No such file or directory]" in html
    assert "[figure abs not embedded: not a file in the report directory]" in html


def test_config_folds_closed_with_its_yaml_as_code_and_numbers_align_by_column(tmp_path):
    yaml_text = "model:\n  latent_dim: 16\n  note: '<b>not bold</b>'\n"
    markdown = ("<details><summary>config.yaml (the resolved config)</summary>\n\n"
                + escape_markdown(yaml_text, code="yaml") + "\n\n</details>\n\n"
                + table(("Setting", "Value"), [("Batch size", "64"), ("Optimiser", "adam")]) + "\n\n"
                + table(("epoch", "loss"), [("0", "2.5"), ("1", "n/a"), ("2", "1,234")]))
    html = markdown_to_html(markdown, base_dir=tmp_path)
    tags = [tag for tag, _ in elements(html)]
    details = tags.index("details")
    assert tags[details:details + 4] == ["details", "summary", "pre", "code"]  # the YAML is inside the fold
    assert ('<details><summary>config.yaml (the resolved config)</summary>' in html
            and "open" not in dict(elements(html)[details][1]))
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and html.index("</details>") > html.index("</pre>")
    # A mixed Setting/Value column stays left-aligned; an all-number column (n/a aside) is right-aligned.
    assert "<td>64</td>" in html and "<td>adam</td>" in html
    assert '<td class="num">2.5</td>' in html and '<td class="num">1,234</td>' in html and '<td class="num">n/a</td>' in html


def test_the_page_title_is_escaped(tmp_path):
    page = report_page("# x", title="</title><script>alert(1)</script>", base_dir=tmp_path)
    assert "<title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
