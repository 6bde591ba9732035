"""A real React page on ``@ai-sdk/react``'s ``useChat`` (``tests/node/use_chat/app.jsx``, bundled
with esbuild) in Chromium, served from the streamctl server's origin: text streams in, Stop stops
the run on the server, and a reload mid-answer resumes with every word exactly once."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright

from streamctl.agents import ScriptedAgent, Wait

from .conftest import Server, StartServer, chunks
from .node_clients import NODE_DIR, require_node

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
HTML = (
    b'<!doctype html><meta charset="utf-8"><div id="root"></div>'
    b'<script type="module" src="app.js"></script>'
)
READY = "() => document.querySelector('#status')?.textContent === 'ready'"
LAST = "[...document.querySelectorAll('.msg.assistant')].at(-1)?.textContent"
# Every text the assistant bubble showed, in order (to prove no text was ever doubled).
RECORDER = """
window.__texts = [];
new MutationObserver(() => {
  const views = document.querySelectorAll(".msg.assistant");
  const text = views.length ? views[views.length - 1].textContent : "";
  if (window.__texts.at(-1) !== text) window.__texts.push(text);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require_node("@ai-sdk/react", "react-dom", "esbuild")
    if not CHROMIUM.exists() or shutil.which("node") is None:
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("use_chat") / "app.js"
    subprocess.run(
        [
            str(NODE_DIR / "node_modules/.bin/esbuild"),
            str(NODE_DIR / "use_chat/app.jsx"),
            "--bundle",
            "--format=esm",
            "--jsx=automatic",
            f"--outfile={out}",
            '--define:process.env.NODE_ENV="production"',
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
async def browser(bundle: bytes) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, server: Server, bundle: bytes, chat: str) -> Page:
    page = await browser.new_page()

    async def serve_page(route: Route) -> None:
        if route.request.url.split("?")[0].endswith("/app.js"):
            await route.fulfill(body=bundle, content_type="text/javascript")
        else:
            await route.fulfill(body=HTML, content_type="text/html")

    # The page comes from the streamctl server's own origin, like an app mounted beside it.
    await page.route(f"{server.url}/use-chat/**", serve_page)
    await page.add_init_script(RECORDER)
    await page.goto(f"{server.url}/use-chat/index.html?chat={chat}")
    return page


async def assistant_text(page: Page) -> str:
    text: str = await page.evaluate(f"() => {LAST} ?? ''")
    return text


async def until_text(page: Page, text: str) -> None:
    await page.wait_for_function(f"(t) => {LAST} === t", arg=text)


async def test_use_chat_streams_and_stop_stops_the_run(
    serve: StartServer, browser: Browser, bundle: bytes
) -> None:
    gate = anyio.Event()  # never set: only Stop ends the run
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, word="late")])
    server = await serve(agent=agent)
    with anyio.fail_after(30):
        page = await open_page(browser, server, bundle, "c1")
        await page.wait_for_function(READY)
        await page.click("#send")
        await until_text(page, "w0 w1 w2 ")
        await page.click("#stop")
        await page.wait_for_function(READY)
        async with server.client() as client:
            thread = (await client.get("/v1/threads/c1")).json()
    assert thread["last_run"]["status"] == "cancelled" and thread["active_run"] is None
    assert await assistant_text(page) == "w0 w1 w2 " and not gate.is_set()
    await page.close()


async def test_reload_mid_answer_resumes_with_the_text_exactly_once(
    serve: StartServer, browser: Browser, bundle: bytes
) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, "m1", word="v")])
    server = await serve(agent=agent)
    with anyio.fail_after(30):
        page = await open_page(browser, server, bundle, "c2")
        await page.wait_for_function(READY)
        await page.click("#send")
        await until_text(page, "w0 w1 w2 ")
        await page.reload()  # the run goes on; useChat({resume: true}) rejoins it on mount
        await until_text(page, "w0 w1 w2 ")
        gate.set()
        await until_text(page, "w0 w1 w2 v0 v1 v2 ")
        await page.wait_for_function(READY)
    texts: list[Any] = await page.evaluate("() => window.__texts")
    final = "w0 w1 w2 v0 v1 v2 "
    assert texts[-1] == final
    assert all(final.startswith(t) for t in texts), texts  # never a doubled word, at any moment
    await page.close()
