"""A small Chrome DevTools Protocol client for browser tests: headless Chromium with a remote-debugging
port, one page, real input events (Input.dispatchKeyEvent / dispatchMouseEvent), downloads to a folder.

Only what the review-page test needs; aiohttp's websocket client carries the protocol.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
)  # fmt: skip
KEYS = {  # key -> (code, windows virtual key code)
    "j": ("KeyJ", 74), "k": ("KeyK", 75), "a": ("KeyA", 65), "n": ("KeyN", 78), "x": ("KeyX", 88),
    "]": ("BracketRight", 221), "[": ("BracketLeft", 219),
    **{str(d): (f"Digit{d}", 48 + d) for d in range(10)},
}  # fmt: skip


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM)


class Browser:
    """``async with Browser(profile_dir, size) as b``: Chromium started, ``b.page`` the first tab."""

    def __init__(self, profile: Path, size: tuple[int, int] = (1280, 900)) -> None:
        self.profile, self.size = profile, size
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        w, h = self.size
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={w},{h}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start: {self.proc.stderr.read()[-2000:]!r}")
            await asyncio.sleep(0.1)
        port, browser_path = port_file.read_text().split()[:2]
        self.http = aiohttp.ClientSession()
        self.browser_ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{browser_path}", max_msg_size=0)
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json(content_type=None)
        page = next(t for t in targets if t["type"] == "page")
        self.page_ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for ws in (self.page_ws, self.browser_ws):
            await ws.close()
        await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def call(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        """Send one command and return its result (events arriving meanwhile are dropped)."""
        ws = self.browser_ws if browser else self.page_ws
        msg_id = next(self._ids)
        await ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads((await asyncio.wait_for(ws.receive(), 60)).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && !!window.adrayReview")

    async def wait_for(self, expression: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            await asyncio.sleep(0.1)

    async def key(self, key: str) -> None:
        """One key press as the keyboard sends it: keyDown (with its text) and keyUp."""
        code, vk = KEYS[key]
        down = {"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk, "text": key}
        await self.call("Input.dispatchKeyEvent", down)
        await self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                                   "windowsVirtualKeyCode": vk})  # fmt: skip

    async def click(self, selector: str) -> None:
        """A left mouse click at the centre of the first element matching ``selector`` (scrolled into view)."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise LookupError(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            event = {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1}
            await self.call("Input.dispatchMouseEvent", event)

    async def type_text(self, text: str) -> None:
        await self.call("Input.insertText", {"text": text})

    async def allow_downloads(self, folder: Path) -> None:
        params = {"behavior": "allow", "downloadPath": str(folder)}
        await self.call("Browser.setDownloadBehavior", params, browser=True)

    async def screenshot(self, path: Path) -> None:
        import base64

        res = await self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(res["data"]))
