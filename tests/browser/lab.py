"""Drive JupyterLab the way a user does: a real server on localhost, a notebook page in headless Chromium.

`JupyterLabServer` starts `jupyter lab` in its own process group (so stopping it also ends its
kernels); `launch_chromium` starts Debian's /usr/bin/chromium through Playwright, because CI
machines cannot download Playwright's own browser builds; `NotebookPage` opens a notebook, waits
for its kernel, runs a cell and reads its output through the DOM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "missing_requirements", "JupyterLabServer", "launch_chromium", "NotebookPage"]

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without the background-networking flags Chromium keeps trying
# (and failing) to reach Google's services, which slows every start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDGET_VIEW = ".jp-OutputArea-output > .jupyter-widgets"  # the top-level view of a displayed widget


def missing_requirements() -> Optional[str]:
    """Why the browser tests cannot run here (None when they can)."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (install Debian's chromium: .ci/install-browser-deps)"
    for module, package in (("jupyterlab", "jupyterlab"), ("playwright.sync_api", "playwright"),
                            ("ipywidgets", "ipywidgets")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"python package {package!r} is not installed (pip install {package})"
    return None


def _free_port() -> int:
    """A localhost port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLabServer:
    """`jupyter lab` serving `root` on a free localhost port with a random token; a context manager."""

    def __init__(self, root: Path, *, startup_timeout_s: float = 60.0):
        self.root = Path(root)
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.startup_timeout_s = startup_timeout_s
        self.log_path = self.root.parent / f"jupyterlab-{self.port}.log"
        self._process: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """`path` on the server, with the token as a query parameter."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str) -> object:
        """GET a REST endpoint (e.g. "api/sessions") and decode its JSON."""
        with urllib.request.urlopen(self.url(path), timeout=5) as response:
            return json.loads(response.read())

    def start(self) -> "JupyterLabServer":
        """Start the server and wait until /api/status answers; raises RuntimeError with the log tail."""
        state = self.root.parent / f"jupyter-state-{self.port}"
        env = dict(os.environ)
        # A private config, runtime and settings directory: the user's ~/.jupyter must not change what the test sees.
        env.update(JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
                   JUPYTER_PLATFORM_DIRS="1")
        # The kernels serve a live page: a CI job's headless switch must not reach them.
        env.pop("THESIS_LIB_HEADLESS", None)
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}",
                   "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}", "--ServerApp.open_browser=False",
                   f"--LabApp.user_settings_dir={state / 'settings'}",
                   f"--LabApp.workspaces_dir={state / 'workspaces'}"]
        if os.geteuid() == 0:  # CI containers run as root; the server refuses that unless told
            command.append("--allow-root")
        _write_lab_settings(state / "settings")
        self._log = open(self.log_path, "wb")
        # Its own session (process group): stop() signals the group, kernels included.
        self._process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                self.api("api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        raise RuntimeError(f"jupyter lab did not answer /api/status within {self.startup_timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 10 s) and any kernel it left behind."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            import psutil

            # Kernels run in sessions of their own (jupyter_client starts them so): remember them
            # now, to end those a killed server could not shut down itself.
            try:
                descendants = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            for child in descendants:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server printed."""
        if not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "JupyterLabServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _write_lab_settings(settings_dir: Path) -> None:
    """No news / update toasts: the network is closed, and a toast would cover part of a screenshot."""
    target = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))


def launch_chromium(playwright, user_data_dir: Path, *, width: int = 1400, height: int = 1000):
    """Debian's Chromium, headless, with a fresh profile in `user_data_dir`; returns a BrowserContext."""
    if user_data_dir.exists():
        shutil.rmtree(user_data_dir)
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height},
    )


class NotebookPage:
    """One notebook open in JupyterLab: wait for its kernel, run a cell, read outputs and widgets."""

    def __init__(self, page, server: JupyterLabServer, notebook: str):
        self.page = page
        self.server = server
        self.notebook = notebook

    def open(self, timeout_s: float = 60.0) -> "NotebookPage":
        """Load /lab/tree/<notebook> and wait until its kernel is idle."""
        self.page.goto(self.server.url(f"lab/tree/{self.notebook}"), timeout=timeout_s * 1000)
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
        self.wait_kernel_idle(timeout_s)
        return self

    def wait_kernel_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until the notebook's kernel is started, connected to this page and idle.

        The toolbar reads "idle" before the kernel has even started, and a cell run then is
        lost, so the server's own view of the session (connections, execution_state) decides.
        """
        deadline = time.monotonic() + timeout_s
        kernel: dict = {}
        while time.monotonic() < deadline:
            sessions = [s for s in self.server.api("api/sessions") if s.get("path") == self.notebook]
            kernel = (sessions[0].get("kernel") or {}) if sessions else {}
            if kernel.get("execution_state") == "idle" and kernel.get("connections", 0) > 0:
                self.page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
                    timeout=max(1.0, deadline - time.monotonic()) * 1000)
                return
            time.sleep(0.25)
        raise AssertionError(f"the kernel of {self.notebook} was not idle and connected within {timeout_s:.0f} s "
                             f"(last seen: {kernel or 'no session'}); server log:\n{self.server.log_tail()}")

    def cell(self, index: int):
        """The locator of code cell `index` (0-based, counting every cell)."""
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def run_cell(self, index: int) -> None:
        """Select cell `index` and run it with Shift+Enter, as a user would."""
        cell = self.cell(index)
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")

    def prompt(self, index: int) -> str:
        """The cell's input prompt: "[ ]:" never run, "[*]:" running or queued, "[3]:" done."""
        return self.cell(index).locator(".jp-InputPrompt").inner_text().strip()

    def wait_cell_started(self, index: int, timeout_s: float = 30.0) -> None:
        """Wait until the cell runs or has run (its prompt is no longer blank)."""
        self._wait_prompt(index, lambda text: text not in ("", "[ ]:"), "start", timeout_s)

    def wait_cell_done(self, index: int, timeout_s: float = 60.0) -> None:
        """Wait until the cell's prompt shows an execution count."""
        self._wait_prompt(index, lambda text: text[1:-2].strip().isdigit(), "finish", timeout_s)

    def _wait_prompt(self, index: int, ready, what: str, timeout_s: float) -> None:
        """Poll the prompt of cell `index` until `ready(prompt)`; raises AssertionError with the output."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.prompt(index)
            if ready(text):
                return
            time.sleep(0.2)
        raise AssertionError(f"cell {index} of {self.notebook} did not {what} within {timeout_s:.0f} s "
                             f"(prompt {text!r}); its output:\n{self.output_text(index)}")

    def output_text(self, index: int) -> str:
        """Everything cell `index` shows as output (text, widgets), as the page renders it."""
        outputs = self.cell(index).locator(".jp-OutputArea")
        return outputs.inner_text() if outputs.count() else ""

    def widget(self, index: int):
        """The locator of the first widget view in cell `index`'s output."""
        return self.cell(index).locator(WIDGET_VIEW).first
