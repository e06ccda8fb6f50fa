"""report.html opened in a real browser with the network off: Debian's headless Chromium, driven by Playwright.

A run report and a sweep report are rendered from real tiny runs, one of whose config and log
carry script payloads (`<img onerror>`, `<script>`, a closing `</details>`). Each page is opened
offline and must: log no console error and no uncaught exception, make no request other than the
file itself (everything embedded), decode every image, run nothing it was handed (the payloads
set a flag on `window` if they ever run), hold no `<script>` element, fold the config in a closed
`<details>` around a `<pre><code>` block and show the log in a monospace font.

Screenshots of both pages go to the test's tmp dir; with UPDATE_EXAMPLES=1 they also replace
docs/examples/run_report.png and docs/examples/sweep_report.png (the README shows them).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest
import yaml

from browser.lab import CHROMIUM, CHROMIUM_ARGS
from thesis_lib.config import load_config
from thesis_lib.layout import CONFIG_FILE, STDOUT_LOG
from thesis_lib.reports import render_run_report, render_sweep_report
from thesis_lib.train import fit

pytest_plugins = ("report_fixtures",)


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (install Debian's chromium: .ci/install-browser-deps)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python package 'playwright' is not installed (pip install playwright)"
    return None


MISSING = _missing()
pytestmark = [pytest.mark.browser, pytest.mark.slow]
if MISSING:
    pytestmark.append(pytest.mark.skip(reason=MISSING))

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
# Each payload flips a flag if it ever runs; the CSP would also log a console error for it.
PAYLOAD_DATA = '<img src=x onerror="window.__pwned = 1">'
PAYLOAD_RUN_NAME = "<script>window.__pwned = 2</script>"
PAYLOAD_LOG = "</details><script>window.__pwned = 3</script><img src=x onerror=\"window.__pwned = 4\">"

PAGE_FACTS = """() => ({
    pwned: window.__pwned === undefined ? null : window.__pwned,
    scripts: document.querySelectorAll('script').length,
    images: Array.from(document.images).map(img => ({complete: img.complete, width: img.naturalWidth, alt: img.alt})),
    details: Array.from(document.querySelectorAll('details')).map(d => ({
        open: d.open, summary: d.querySelector('summary') ? d.querySelector('summary').textContent : null,
        code: d.querySelectorAll('pre > code').length})),
    logFont: (() => { const c = document.querySelector('pre > code.language-text');
                      return c ? getComputedStyle(c).fontFamily : null; })(),
    bodyFont: getComputedStyle(document.body).fontFamily,
    text: document.body.innerText,
})"""


@pytest.fixture(scope="module")
def hostile_run(report_root, tmp_path_factory) -> Path:
    """A 3-epoch CPU run with telemetry on (the CPU panels), its config and log then given script payloads."""
    root = tmp_path_factory.mktemp("browser_report")
    config = load_config({
        "output_root": str(root / "outputs"), "run_name": "browser",
        "data": {"path": str(report_root / "events.h5"), "batch_size": 64},
        "model": {"encoder": "mlp", "hidden_dim": 16, "num_layers": 1, "latent_dim": 8, "token_embed_dim": 4},
        "trainer": {"epochs": 3, "seed": 0, "sync_every_n_steps": 1},
        "telemetry": {"interval_s": 0.1}, "report": {"enabled": False},
    })
    with contextlib.redirect_stdout(io.StringIO()):
        run_dir = Path(fit(config).run_dir)
    config_doc = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    config_doc["data"]["path"], config_doc["run_name"] = PAYLOAD_DATA, PAYLOAD_RUN_NAME
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config_doc, sort_keys=False))
    with open(run_dir / STDOUT_LOG, "a", encoding="utf-8") as log:
        log.write(PAYLOAD_LOG + "\n")
    return run_dir


def open_offline(html: Path, screenshot: Path) -> tuple[dict, list[str], list[str]]:
    """Open `html` in Chromium with the network off; (page facts, problems logged, requests made), and a screenshot."""
    from playwright.sync_api import sync_playwright

    problems, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_timeout(300)  # a late handler or a deferred load would show up here
            facts = page.evaluate(PAGE_FACTS)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return facts, problems, requests


def check_page(html: Path, facts: dict, problems: list[str], requests: list[str], *, min_images: int) -> None:
    """What both reports must satisfy in the browser."""
    assert problems == []
    assert requests == [html.resolve().as_uri()]  # the file itself, nothing else
    assert facts["pwned"] is None and facts["scripts"] == 0
    assert len(facts["images"]) >= min_images
    assert all(image["complete"] and image["width"] > 0 for image in facts["images"]), facts["images"]


def test_the_run_report_opens_offline_inert_and_readable(hostile_run, tmp_path):
    paths = render_run_report(hostile_run)
    facts, problems, requests = open_offline(paths["html"], tmp_path / "run_report.png")
    check_page(paths["html"], facts, problems, requests, min_images=2)
    # The payloads are on the page as text, where they were planted.
    assert PAYLOAD_DATA in facts["text"] and PAYLOAD_LOG in facts["text"]
    [config] = [d for d in facts["details"] if d["summary"].startswith("config.yaml")]
    assert config == {"open": False, "summary": "config.yaml (the resolved config)", "code": 1}
    assert "monospace" in facts["logFont"] and "monospace" not in facts["bodyFont"]
    # A CPU run: the process panels are drawn, and the page says why there is no GPU telemetry.
    assert "No GPU telemetry: no NVIDIA GPU visible" in facts["text"]
    assert {image["alt"] for image in facts["images"]} >= {"Telemetry", "Training curves"}
    _keep_example(tmp_path / "run_report.png", "run_report.png")


def test_the_sweep_report_opens_offline_inert_and_readable(report_sweep, hostile_run, tmp_path):
    runs = sorted(str(path) for path in report_sweep.glob("runs/*")) + [str(hostile_run)]
    paths = render_sweep_report(run_dirs=runs, analysis="generic", output_dir=tmp_path / "sweep",
                                inference={"enabled": True, "max_samples": 200})
    facts, problems, requests = open_offline(paths["html"], tmp_path / "sweep_report.png")
    check_page(paths["html"], facts, problems, requests, min_images=4)
    # The hostile run's model cannot find its data (the path is the payload): the error names it, as text.
    assert PAYLOAD_DATA in facts["text"]
    _keep_example(tmp_path / "sweep_report.png", "sweep_report.png")


def _keep_example(screenshot: Path, name: str) -> None:
    if os.environ.get("UPDATE_EXAMPLES") == "1":
        EXAMPLES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, EXAMPLES / name)
