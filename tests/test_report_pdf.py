"""report.pdf: an HTML page printed by Debian's headless Chromium, checked by rendering page 1 back.

The real print needs `chromium` and poppler-utils' `pdftoppm`/`pdftotext` (`.ci/install-browser-deps`)
and is skipped, with the reason, without them. The error paths run everywhere: they use a
stand-in "browser" (a small shell script) named by THESIS_LIB_CHROMIUM.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from thesis_lib.config import load_config
from thesis_lib.errors import ConfigError, ReportError
from thesis_lib.reports.pdf import CHROMIUM_ENV, PRINT_CSS, chromium_command, find_chromium, write_pdf

needs_chromium = pytest.mark.skipif(
    not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")),
    reason="no Chromium on PATH (apt-get install chromium; see .ci/install-browser-deps)")
needs_poppler = pytest.mark.skipif(
    not (shutil.which("pdftoppm") and shutil.which("pdftotext")),
    reason="no pdftoppm/pdftotext on PATH (apt-get install poppler-utils; see .ci/install-browser-deps)")

HIDDEN_TEXT = "Folded config text"


def _figure_png() -> bytes:
    """A small matplotlib figure: a thick pure-blue line, so its pixels are easy to find on the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    ax.plot([0, 1, 2, 3], [0, 2, 1, 3], color="#0000ff", linewidth=6)
    ax.set_title("loss per epoch")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _report_html(tmp_path: Path) -> Path:
    """A page like report.html: heading, paragraph, table, embedded PNG, a closed <details>, PRINT_CSS."""
    png = base64.b64encode(_figure_png()).decode("ascii")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run report: pdf-test</title>
<style>body {{ font-family: "DejaVu Sans", sans-serif; }} main {{ max-width: 1100px; padding: 24px 32px; }}
th, td {{ border: 1px solid #999; padding: 4px 10px; }} th {{ background: #e0e0e0; }}
{PRINT_CSS}</style></head>
<body><main>
<h1>Run report: pdf-test</h1>
<p>The run trained for two epochs; the best validation loss was 3.036 at epoch 1.</p>
<table><tr><th>Metric</th><th>Value</th></tr><tr><td>loss, best</td><td>3.036</td></tr>
<tr><td>throughput</td><td>33,963 samples/s</td></tr></table>
<img src="data:image/png;base64,{png}" alt="curves">
<details><summary>config.yaml</summary><pre>{HIDDEN_TEXT}: run_name pdf-test</pre></details>
</main></body></html>
"""
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _fake_browser(tmp_path: Path, body: str) -> Path:
    """A stand-in browser: a shell script that finds its --print-to-pdf= path in $out, then runs `body`."""
    script = tmp_path / "fake-chromium"
    script.write_text("#!/bin/sh\nout=\nfor arg in \"$@\"; do\n  case \"$arg\" in --print-to-pdf=*) "
                      "out=\"${arg#--print-to-pdf=}\";; esac\ndone\n" + body + "\n")
    script.chmod(0o755)
    return script


@needs_chromium
@needs_poppler
def test_write_pdf_prints_the_page_and_page_one_is_not_blank(tmp_path, capfd):
    html_path = _report_html(tmp_path)
    started = time.perf_counter()
    pdf_path = write_pdf(html_path)
    seconds = time.perf_counter() - started
    print(f"write_pdf took {seconds:.2f} s")

    assert pdf_path == tmp_path / "report.pdf"
    assert pdf_path.read_bytes().startswith(b"%PDF-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.pdf"]  # no temporary file left
    captured = capfd.readouterr()
    assert captured.err == "" and "bytes written" not in captured.out  # Chromium's noise stays captured

    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(pdf_path), str(tmp_path / "page")],
                   check=True, capture_output=True, timeout=60)
    from PIL import Image

    with Image.open(next(tmp_path.glob("page*.png"))) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    assert abs(width - 413) <= 2 and abs(height - 585) <= 2, f"page 1 is {width}x{height} px at 50 dpi, not A4"
    colours = rgb.getcolors(maxcolors=width * height)  # [(count, (r, g, b)), ...]
    inked = sum(count for count, (r, g, b) in colours if min(r, g, b) < 200)
    assert inked / (width * height) > 0.01, f"page 1 is (nearly) blank: {inked} of {width * height} pixels inked"
    greys = {(r + g + b) // 3 for _, (r, g, b) in colours}
    assert len(greys) > 10, f"page 1 has only {len(greys)} grey levels"
    blue = sum(count for count, (r, g, b) in colours if b > 180 and r < 120 and g < 120)
    assert blue > 50, "the embedded PNG (a blue line) is not on page 1"

    text = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf_path), "-"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    assert "Run report: pdf-test" in text and "33,963 samples/s" in text and "two epochs" in text
    assert HIDDEN_TEXT in text  # PRINT_CSS prints a closed <details> opened
    assert "file://" not in text  # no header/footer with the page's URL


def test_command_flags():
    command = chromium_command("/usr/bin/chromium", Path("/r/report.html"), Path("/r/.report.pdf.ab.tmp"),
                               Path("/tmp/profile"))
    assert command[0] == "/usr/bin/chromium" and command[-1] == "file:///r/report.html"
    for flag in ("--headless", "--no-pdf-header-footer", "--disable-extensions", "--no-first-run",
                 "--user-data-dir=/tmp/profile", "--print-to-pdf=/r/.report.pdf.ab.tmp"):
        assert flag in command
    assert ("--no-sandbox" in command) == (os.geteuid() == 0)  # only where Chromium refuses the sandbox


def test_no_browser_says_what_to_install(tmp_path, monkeypatch):
    html_path = _report_html(tmp_path)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "no-such-chromium"))
    with pytest.raises(ReportError, match="apt-get install chromium") as error:
        write_pdf(html_path)
    assert CHROMIUM_ENV in str(error.value) and "no-such-chromium" in str(error.value)

    monkeypatch.delenv(CHROMIUM_ENV)
    assert find_chromium() is None
    with pytest.raises(ReportError, match="apt-get install chromium") as error:
        write_pdf(html_path)
    assert CHROMIUM_ENV in str(error.value)
    assert not (tmp_path / "report.pdf").exists()


def test_failing_browser_names_exit_code_and_stderr(tmp_path, monkeypatch):
    html_path = _report_html(tmp_path)
    browser = _fake_browser(tmp_path, 'printf "%%PDF-1.4 half" > "$out"\n'
                                      'echo "[0:0:ERROR:dbus/bus.cc] Failed to connect to the bus" >&2\n'
                                      'echo "FATAL: cannot open the page (fake)" >&2\nexit 3')
    monkeypatch.setenv(CHROMIUM_ENV, str(browser))
    assert find_chromium() == str(browser)
    with pytest.raises(ReportError) as error:
        write_pdf(html_path)
    message = str(error.value)
    assert "exit code 3" in message and "FATAL: cannot open the page (fake)" in message
    assert "dbus" not in message  # the noise is left out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-chromium", "report.html"]  # no pdf, no tmp


def test_failing_browser_leaves_an_existing_pdf_alone(tmp_path):
    html_path = _report_html(tmp_path)
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 the old report")
    browser = _fake_browser(tmp_path, "echo 'no PDF for you' >&2; exit 1")
    with pytest.raises(ReportError, match="(?s)exit code 1.*no PDF for you"):
        write_pdf(html_path, browser=str(browser))
    assert (tmp_path / "report.pdf").read_bytes() == b"%PDF-1.4 the old report"


def test_browser_that_writes_no_pdf(tmp_path):
    html_path = _report_html(tmp_path)
    browser = _fake_browser(tmp_path, "echo 'all went well' >&2; exit 0")
    with pytest.raises(ReportError, match="(?s)wrote no PDF.*all went well"):
        write_pdf(html_path, browser=str(browser))
    assert not (tmp_path / "report.pdf").exists()


def test_browser_that_hangs_is_killed(tmp_path):
    html_path = _report_html(tmp_path)
    browser = _fake_browser(tmp_path, "echo 'still loading' >&2; sleep 60")
    started = time.monotonic()
    with pytest.raises(ReportError, match="(?s)timed out after 1 s.*still loading"):
        write_pdf(html_path, browser=str(browser), timeout_s=1)
    assert time.monotonic() - started < 15  # the sleeping child went with it: nothing held stderr open
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-chromium", "report.html"]


def test_success_replaces_the_pdf_and_keeps_the_noise_off_the_console(tmp_path, capfd):
    html_path = _report_html(tmp_path)
    target = tmp_path / "out" / "thesis.pdf"
    target.parent.mkdir()
    target.write_bytes(b"%PDF-1.4 old")
    browser = _fake_browser(tmp_path, 'printf "%%PDF-1.4 new" > "$out"\necho "noise on stderr" >&2\n'
                                      'echo "13 bytes written to file $out"')
    assert write_pdf(html_path, target, browser=str(browser)) == target
    assert target.read_bytes() == b"%PDF-1.4 new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["thesis.pdf"]
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_missing_html_is_an_error_not_an_error_page(tmp_path):
    browser = _fake_browser(tmp_path, 'printf "%%PDF-1.4" > "$out"')
    with pytest.raises(ReportError, match="does not exist"):
        write_pdf(tmp_path / "report.html", browser=str(browser))
    assert not (tmp_path / "report.pdf").exists()


def test_report_pdf_config_switch():
    assert load_config().report.pdf is False
    assert load_config(overrides=["report.pdf=true"]).report.pdf is True
    with pytest.raises(ConfigError, match="report.pdf"):
        load_config(overrides=["report.pdf=1"])
