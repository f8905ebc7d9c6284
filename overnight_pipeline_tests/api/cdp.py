"""A headless Chromium driven over the DevTools protocol (no extra browser tooling), and
axe-core injected into its pages for accessibility audits.

`ensure_browser_tools()` installs Debian's `chromium` and axe-core (npm registry, the version
pinned in `scripts/ensure-services.sh`) through that script when either is missing (root
and apt-get needed, as on a fresh CI machine); a tool still missing then fails the test.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]


AXE_JS = ROOT / ".data/axe/node_modules/axe-core/axe.min.js"


@dataclass(frozen=True)
class BrowserTools:
    chromium: str
    axe_js: Path


def ensure_browser_tools() -> BrowserTools:
    found = shutil.which("chromium")
    if not found or not AXE_JS.is_file():
        done = subprocess.run(
            ["bash", str(ROOT / "scripts/ensure-services.sh"), "browser"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        found = shutil.which("chromium")
        if not found or not AXE_JS.is_file():
            raise RuntimeError(
                f"chromium or axe-core is missing and could not be installed:\n{done.stderr}"
            )
    return BrowserTools(found, AXE_JS)


class Browser:
    """One headless Chromium process with one page, driven through CDP."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespace sandbox
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1200,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: /usr/bin/chromium is a wrapper script, and closing must
            # reach the browser, its zygotes and renderers, never anything else.
            start_new_session=True,
        )
        self.stack = contextlib.ExitStack()
        self.stack.callback(self._stop_process)
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t["type"] == "page")
            self.ws: ClientConnection = self.stack.enter_context(
                connect(page["webSocketDebuggerUrl"], max_size=None)
            )
            self.ids = itertools.count(1)
            self.events: list[dict[str, Any]] = []
            self.call("Page.enable")
            self.call("Runtime.enable")
            # The page's CSP allows no script at all: let the injected audit run anyway.
            self.call("Page.setBypassCSP", enabled=True)
        except BaseException:
            self.stack.close()
            raise

    def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().splitlines()[0])
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for_load(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event.get("method") == "Page.loadEventFired":
                    del self.events[: i + 1]
                    return
            self.events.append(json.loads(self.ws.recv(timeout=30)))
        raise TimeoutError("page did not finish loading")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for_load()

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field and type, as a person pasting the token would."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def submit(self, selector: str) -> None:
        """Submit a form as its button would, then wait for the page that answers it."""
        self.events.clear()
        self.evaluate(f"document.querySelector({json.dumps(selector)}).requestSubmit()")
        self.wait_for_load()

    def screenshot(self, path: Path, *, full_page: bool = True) -> bytes:
        """The whole page, or what the screen shows (`full_page=False`)."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"] if full_page else metrics["cssLayoutViewport"]
        width, height = (
            size.get("width", size.get("clientWidth")),
            size.get("height", size.get("clientHeight")),
        )
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=full_page
        )
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data

    def viewport(self, width: int, height: int, *, mobile: bool) -> None:
        """Lay pages out as a screen of this size does (a phone: `mobile`, meta viewport)."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    def audit(self, axe_js: Path) -> list[dict[str, Any]]:
        """axe-core's violations on the current page (WCAG 2.x A/AA and best practices)."""
        if not self.evaluate("typeof window.axe === 'object'"):
            self.evaluate(axe_js.read_text())
        result = self.call(
            "Runtime.evaluate",
            expression="axe.run(document, {resultTypes: ['violations']})"
            ".then(r => r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.map(n => n.target.join(' '))})))",
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"axe.run: {result['exceptionDetails']}")
        violations: list[dict[str, Any]] = result["result"]["value"]
        return violations

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        self.stack.close()

    def _stop_process(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of the group is left
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
