"""report.pdf: report.html printed by a real browser engine, Chromium's own headless `--print-to-pdf`.

Why Chromium's print-to-pdf and not nbconvert's webpdf exporter: webpdf needs playwright (and,
unless pointed elsewhere, a browser build it downloads), and it re-renders the notebook through
nbconvert's own HTML template, scripts included. Printing the report.html already written means
one page, one look: the PDF is that file as Chromium lays it out for print, with no Python
dependency beyond the standard library. Debian's `chromium` package (what CI installs, see
.ci/install-browser-deps) is the engine; THESIS_LIB_CHROMIUM names another binary.

The command (`chromium_command`), flag by flag:

- `--headless`: no window, no display needed (Chromium >= 112 runs the "new" headless mode, the
  full browser, under this flag).
- `--print-to-pdf=<file>`: print the loaded page and exit. The file is a temporary one beside
  the target, renamed over it once it is a whole PDF, so nothing half-written is ever left at
  report.pdf (a failed print leaves the old report.pdf, or none).
- `--no-pdf-header-footer`: without it every page carries the date, the page's title, its
  file:// URL (the author's directories) and a page count. Chromium before 111 spelled it
  `--print-to-pdf-no-header`; both are passed, since Chromium ignores switches it does not know.
- `--disable-gpu`: nothing to accelerate when printing; avoids GPU-process warnings on servers.
- `--disable-background-networking --disable-extensions --no-first-run` and a fresh
  `--user-data-dir` (a temporary folder, removed afterwards): no update/safe-browsing traffic,
  none of the extensions Debian's launcher loads, no first-run work, and nothing read from or
  written to the user's own Chromium profile (nor a clash with a Chromium they have open).
- `--no-sandbox` only when running as root: Chromium refuses to start sandboxed as root
  ("Running as root without --no-sandbox is not supported"). The page is our own inert
  report.html, and otherwise the sandbox stays on.

Chromium writes a stream of harmless noise to stderr even when it succeeds (D-Bus is absent on a
server, Debian's launcher script complains about /dev/shm) and a "N bytes written" line to
stdout: both are captured, shown only (the last lines, D-Bus noise left out) when it fails.

What print CSS matters (checked with Chromium 150 on Debian 12, `PRINT_CSS` holds the result):

- Page size: without `@page` Chromium prints US Letter with its own ~1 cm margins; `@page { size:
  A4; margin: 15mm }` gives A4, the paper a European thesis uses.
- Closed `<details>` (the config) print as their summary line only: their content is not in the
  PDF at all. `details::details-content { content-visibility: visible }` (Chromium >= 131) prints
  it opened without changing the page on screen; older engines ignore the rule.
- `pre { overflow-x: auto }` on screen clips long lines (a log tail, a path) on paper: in print
  they wrap (`white-space: pre-wrap`).
- Background colours (table headers, code blocks) do print in headless print-to-pdf; the
  `print-color-adjust: exact` rule keeps them when a reader prints from their own browser too.
- Anything wider than the page (a sweep table with many columns; `td.num` does not wrap on
  screen) makes Chromium shrink the *whole* document to fit it: every page comes out in tiny
  type. In print, tables may not exceed the page and their cells wrap (`overflow-wrap: anywhere`),
  so a too-wide table wraps its cells instead.
- A figure or a table row split across two pages is hard to read: `break-inside: avoid` on
  images and rows, `break-after: avoid` on headings. Not on `pre`: a long block (the config)
  would be pushed whole onto the next page, leaving most of a page empty. A table header row
  repeats on every page by itself.
- The page's screen layout (a 1100 px column with padding) is dropped in print, so the
  content uses the page's width inside the @page margins.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Union

from ..atomic_files import check_inside, fsync_dir, refuse_link
from ..errors import ReportError

__all__ = ["PRINT_CSS", "CHROMIUM_ENV", "CHROMIUM_NAMES", "INSTALL_HINT", "find_chromium", "chromium_command",
           "write_pdf"]

# The environment variable naming a Chromium/Chrome binary to use instead of the one on PATH.
CHROMIUM_ENV = "THESIS_LIB_CHROMIUM"
# What is looked for on PATH, in order: Debian's name, the older Debian/Ubuntu name, Google's builds.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (f"report.pdf needs Chromium: apt-get install chromium (Debian/Ubuntu), or set {CHROMIUM_ENV} "
                "to a Chromium/Chrome binary")

# The print rules report.html carries (see the module docstring for why each one is there).
PRINT_CSS = """
@page { size: A4; margin: 15mm; }
@media print {
  body { font-size: 10.5pt; }
  main { max-width: none; margin: 0; padding: 0; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  details::details-content { content-visibility: visible; display: block; }
  summary { list-style: none; }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; overflow: visible; }
  table { display: table; overflow: visible; max-width: 100%; font-size: 0.85em; }  /* the screen scrolls a wide table; paper cannot */
  th, td { padding: 2px 6px; overflow-wrap: anywhere; }
  td.num { white-space: normal; }
  h1, h2, h3 { break-after: avoid; }
  img, tr { break-inside: avoid; }
  img { max-height: 240mm; width: auto; }
}
"""

_STDERR_LINES = 12  # how much of Chromium's stderr a failure shows


def find_chromium() -> Optional[str]:
    """The Chromium (or Chrome) binary to print with, or None when there is none.

    $THESIS_LIB_CHROMIUM comes first: an explicit path (or a name looked up on PATH). Without it,
    the first of `CHROMIUM_NAMES` found on PATH.

    Raises:
        ReportError: THESIS_LIB_CHROMIUM is set but names no executable file; the message names
            it and says what to install.
    """
    explicit = os.environ.get(CHROMIUM_ENV, "").strip()
    if explicit:
        found = shutil.which(explicit) if os.sep not in explicit else (
            explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None)
        if found is None:
            raise ReportError(f"{CHROMIUM_ENV}={explicit} is not an executable file; {INSTALL_HINT}")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_command(browser: str, html_path: Path, pdf_path: Path, profile_dir: Path) -> list[str]:
    """The command line that prints `html_path` (absolute) to `pdf_path` (see the module docstring)."""
    command = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-pdf-header-footer",
        "--print-to-pdf-no-header",  # the same switch in Chromium < 111; newer ones ignore it
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        f"--user-data-dir={profile_dir}",
        f"--print-to-pdf={pdf_path}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run sandboxed as root
    command.append(html_path.as_uri())
    return command


def write_pdf(
    html_path: Union[str, Path],
    pdf_path: Union[str, Path, None] = None,
    *,
    browser: Optional[str] = None,
    timeout_s: float = 120,
    inside: Union[str, Path, None] = None,
) -> Path:
    """Print an HTML file to PDF with headless Chromium; the PDF replaces `pdf_path` atomically.

    Args:
        html_path: the page to print (report.html); images must be embedded or reachable as files.
        pdf_path: where the PDF goes; default: `html_path` with the suffix .pdf. Its folder must exist.
        browser: the Chromium/Chrome binary; default: `find_chromium()`.
        timeout_s: how long Chromium may take before it is killed (with its child processes).
        inside: the directory the write must stay in (the run directory), as for `atomic_open`.

    Returns:
        `pdf_path` as a Path.

    Raises:
        ReportError: no browser (the message says what to install); the HTML file is missing; or
            Chromium failed: exited non-zero, timed out, or wrote no PDF (the message has its exit
            code and the last lines of its stderr). `pdf_path` is then left as it was.
        UnsafePathError: `pdf_path` is a symbolic link, or (with `inside`) lies outside it or below a link in it.
    """
    html_path = Path(html_path)
    pdf_path = Path(pdf_path) if pdf_path is not None else html_path.with_suffix(".pdf")
    browser = browser or find_chromium()
    if browser is None:
        raise ReportError(f"cannot write {pdf_path}: {INSTALL_HINT}")
    if not html_path.is_file():
        # Chromium "prints" a missing file as its error page and exits 0.
        raise ReportError(f"cannot write {pdf_path}: {html_path} does not exist")
    if not pdf_path.parent.is_dir():
        raise ReportError(f"cannot write {pdf_path}: its folder {pdf_path.parent} does not exist")
    if inside is not None:
        check_inside(inside, pdf_path)
    elif pdf_path.is_symlink():
        refuse_link(pdf_path)

    # Chromium writes the temporary file itself, beside the target (a snap-packaged Chromium sees
    # the user's folders but a private /tmp); the profile is a fresh temporary folder.
    tmp_pdf = pdf_path.with_name(f".{pdf_path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tempfile.TemporaryDirectory(prefix="thesis-lib-chromium-") as profile_dir:
            command = chromium_command(browser, html_path.resolve(), tmp_pdf.resolve(), Path(profile_dir))
            returncode, stderr = _run(command, timeout_s)
        where = f"Chromium ({browser}) printing {html_path} to {pdf_path}"
        if returncode is None:
            raise ReportError(f"{where} timed out after {timeout_s:g} s{_stderr_tail(stderr)}")
        if returncode != 0:
            raise ReportError(f"{where} failed with exit code {returncode}{_stderr_tail(stderr)}")
        if not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
            raise ReportError(f"{where} exited 0 but wrote no PDF{_stderr_tail(stderr)}")
        with open(tmp_pdf, "rb+") as handle:
            if handle.read(5) != b"%PDF-":
                raise ReportError(f"{where} wrote a file that is not a PDF{_stderr_tail(stderr)}")
            os.fsync(handle.fileno())
        os.replace(tmp_pdf, pdf_path)
    finally:
        tmp_pdf.unlink(missing_ok=True)
    fsync_dir(pdf_path.parent)
    return pdf_path


def _run(command: list[str], timeout_s: float) -> tuple[Optional[int], str]:
    """Run Chromium in a session of its own, output captured: (exit code or None on timeout, stderr).

    On a timeout the whole process group goes (Chromium's zygote, renderer and GPU processes too).
    """
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ReportError(f"cannot start Chromium ({command[0]}): {exc.strerror or exc}; {INSTALL_HINT}") from None
    try:
        _, stderr = process.communicate(timeout=timeout_s)
        returncode: Optional[int] = process.returncode
    except subprocess.TimeoutExpired:
        _kill_group(process)
        _, stderr = process.communicate()
        returncode = None
    except BaseException:  # KeyboardInterrupt: leave no browser behind
        _kill_group(process)
        process.wait()
        raise
    return returncode, stderr.decode("utf-8", errors="replace")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _stderr_tail(stderr: str) -> str:
    """The last lines of Chromium's stderr for an error message, its D-Bus noise left out."""
    lines = [line for line in stderr.splitlines() if line.strip() and "dbus" not in line.lower()]
    if not lines:
        return "; it wrote nothing to stderr"
    return "; the last lines of its stderr:\n" + "\n".join(lines[-_STDERR_LINES:])
