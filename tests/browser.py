"""A real headless Chromium driven over the DevTools protocol (aiohttp's websocket client, no
extra driver): open a page, read its DOM with JavaScript, collect console errors and uncaught
exceptions, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
)
LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """Debian's chromium (`make browser` installs it), or CHROMIUM if set."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class Page:
    """One tab: commands by id, events collected as they come."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console_errors: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            else:
                self._observe(data.get("method", ""), data.get("params", {}))

    def _observe(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(details.get("exception", {}).get("description", details))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.console_errors.append(f"{entry.get('url', '')}: {entry['text']}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self._ws.send_json({"id": command_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Poll until ``expression`` is truthy in the page; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the page never satisfied: {expression}")
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _devtools_url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    while line := await asyncio.wait_for(process.stderr.readline(), 30):
        if found := LISTENING.search(line):
            return found.group(1).decode()
    raise RuntimeError("chromium exited before it listened for DevTools")


@asynccontextmanager
async def open_page(executable: str) -> AsyncIterator[Page]:
    """A fresh Chromium (own profile) with one blank tab, closed afterwards."""
    with tempfile.TemporaryDirectory(prefix="listmill-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            executable, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        drain: asyncio.Task[bytes] | None = None
        try:
            browser_ws = await _devtools_url(process)
            drain = asyncio.create_task(process.stderr.read())  # a full pipe would stall it
            http_base = browser_ws.split("/devtools/")[0].replace("ws://", "http://")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{http_base}/json/list") as response:
                    targets = await response.json()
                page_ws = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
                async with session.ws_connect(page_ws, max_msg_size=0) as ws:
                    page = Page(ws)
                    for domain in ("Page", "Runtime", "Log"):
                        await page.send(f"{domain}.enable")
                    try:
                        yield page
                    finally:
                        await page.close()
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            if drain is not None:
                drain.cancel()
