"""A real headless Chromium for page tests, driven through chromedriver's W3C WebDriver HTTP API
with the standard library (no selenium). Debian: `apt-get install chromium chromium-driver`.
Outside CI a missing browser skips the test with that hint; in CI (CI=true) it fails."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips (fails in CI) when either is missing."""
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if binary and driver:
        return binary, driver
    message = "no headless Chromium for the page tests: apt-get install chromium chromium-driver"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class WebDriverError(AssertionError):
    pass


class Browser:
    """One chromedriver process and one browser session."""

    def __init__(self, binary: str, driver: str, log_path: str):
        self.port = _free_port()
        self.log = open(log_path, "wb")
        self.driver = subprocess.Popen([driver, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = None
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status").get("ready"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.driver.poll() is not None:
                raise WebDriverError(f"chromedriver did not become ready (see {log_path})")
            time.sleep(0.1)
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        options = {"binary": binary, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                              "--disable-dev-shm-usage", "--window-size=1400,1300"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                doc = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise WebDriverError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        return doc.get("value", doc)

    def _session(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._session("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        """Evaluate `script` (a function body; `arguments` holds `args`) in the page."""
        return self._session("POST", "/execute/sync", {"script": script, "args": list(args)})

    def text(self, selector: str) -> str | None:
        return self.run("const n = document.querySelector(arguments[0]); return n ? n.innerText : null;", selector)

    def screenshot(self) -> bytes:
        return base64.b64decode(self._session("GET", "/screenshot"))

    def close(self) -> None:
        try:
            if self.session:
                self._call("DELETE", f"/session/{self.session}", timeout=20)
        except (OSError, WebDriverError):
            pass
        finally:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
            self.log.close()


@pytest.fixture
def browser(tmp_path):
    binary, driver = find_browser()
    b = Browser(binary, driver, str(tmp_path / "chromedriver.log"))
    yield b
    b.close()
