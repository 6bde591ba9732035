"""The page at `/` in a real headless Chromium (Playwright), against a real server.

The page sends only ``thread_id`` and ``input``, so the pace of its runs comes from ``Paced``: the
demo agent with the test's ``config.demo``, which can also hold a run after its k-th event until
the test releases it (an ``anyio.Event``), so "mid-run" is a state the test waits for, not a time.
Every page records what its last assistant bubble showed after each DOM change (``window.__log``),
so tests can assert on the states the user saw, not only the final one.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from httpx_sse import aconnect_sse
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from .support import Paced, Server, StartServer
from .support.tcp_proxy import Proxy

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "page-mid-run.png"
INTRO = 6  # "Looking up the weather in Tokyo." is the demo's first six events; then the tool call

# What the last assistant bubble shows, appended on every change: [{text, status}, ...].
RECORDER = """
window.__log = [];
const record = () => {
  const views = document.querySelectorAll(".msg.assistant");
  const view = views[views.length - 1];
  if (!view) return;
  const text = [...view.querySelectorAll(".text")].map((s) => s.textContent).join("");
  const status = view.querySelector(".status")?.dataset.status ?? "";
  const last = window.__log[window.__log.length - 1];
  if (!last || last.text !== text || last.status !== status) window.__log.push({ text, status });
};
new MutationObserver(record).observe(document, {
  subtree: true, childList: true, characterData: true, attributes: true,
});
"""
ANSWER_JS = """(i) => {
  const view = [...document.querySelectorAll(".msg.assistant")].at(i);
  return view ? [...view.querySelectorAll(".text")].map((s) => s.textContent).join("") : null;
}"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide, so one browser serves every test of the module


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run under CI: {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Chat:
    server: Server
    agent: Paced
    proxy: Proxy
    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    async def send(self, text: str = "What is the weather in Tokyo?") -> str:
        """Type a message, click Send, and return the run's id once the page knows it."""
        count = await self.page.locator(".msg.assistant[data-run]").count()
        await self.page.fill("#message", text)
        await self.page.click("#send")
        return await self.run_id(count)

    async def run_id(self, index: int = -1) -> str:
        view = self.page.locator(".msg.assistant[data-run]").nth(index)
        run_id = await view.get_attribute("data-run")
        assert run_id
        return run_id

    async def answer(self, index: int = -1) -> str:
        text = await self.page.evaluate(ANSWER_JS, index)
        assert isinstance(text, str)
        return text

    async def log(self) -> list[dict[str, str]]:
        return cast(list[dict[str, str]], await self.page.evaluate("window.__log"))

    async def status_is(self, status: str, count: int = 1) -> None:
        selector = f".msg.assistant .status[data-status={status}]"
        await self.page.wait_for_function(
            "([s, n]) => document.querySelectorAll(s).length >= n", arg=[selector, count]
        )

    async def words_shown(self, n: int) -> None:
        """Wait until the last bubble shows at least ``n`` words."""
        await self.page.wait_for_function(
            f"n => ({ANSWER_JS})(-1)?.split(' ').filter(Boolean).length >= n", arg=n
        )

    async def run(self, run_id: str) -> dict[str, Any]:
        async with self.server.client() as client:
            response = await client.get(f"/v1/runs/{run_id}")
            assert response.status_code == 200, response.text
            run: dict[str, Any] = response.json()
            return run

    async def until_seq(self, run_id: str, seq: int) -> dict[str, Any]:
        """The run's snapshot once it has committed event ``seq`` (seen on its own stream)."""
        async with self.server.client() as client:
            with anyio.fail_after(10):
                url = f"/v1/runs/{run_id}/stream"
                async with aconnect_sse(client, "GET", url) as source:
                    async for event in source.aiter_sse():
                        if event.id.isdigit() and int(event.id) >= seq:
                            break
        run = await self.run(run_id)
        assert run["last_seq"] >= seq, run
        return run


@pytest.fixture
async def chat(serve: StartServer, browser: Browser) -> AsyncIterator[Chat]:
    """A fresh page (its own localStorage) on a fresh server, through a proxy that can cut."""
    agent = Paced(tokens=40, delay_ms=25, tool_ms=150)
    server = await serve(agent=agent, retry_ms=200)
    async with Proxy(server.port) as proxy:
        context = await browser.new_context(viewport={"width": 820, "height": 640})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        chat = Chat(server, agent, proxy, context, page)
        page.on("pageerror", lambda error: chat.errors.append(str(error)))
        await page.add_init_script(RECORDER)
        await page.goto(proxy.url + "/")  # "load": app.js (a module) has run
        try:
            yield chat
        finally:
            await context.close()
    assert not chat.errors, chat.errors


def grew(log: list[dict[str, str]], final: str, status: str = "running") -> list[str]:
    """The distinct partial texts shown with ``status``; each must be a prefix of ``final``."""
    partial = [e["text"] for e in log if e["status"] == status and 0 < len(e["text"]) < len(final)]
    assert all(final.startswith(text) for text in partial), (partial, final)
    return partial


async def test_send_streams_tokens_then_completed(chat: Chat) -> None:
    chat.agent.hold_at = INTRO + 2 + 5  # after the tool call and five words of the answer
    assert await chat.page.is_disabled("#stop")
    run_id = await chat.send()
    await chat.agent.held.wait()
    # Token by token, not all at the end: mid-run, the page shows exactly what was sent so far.
    held = await chat.until_seq(run_id, 1 + chat.agent.hold_at)
    await chat.page.wait_for_function(f"t => ({ANSWER_JS})(-1) === t", arg=held["output"]["text"])
    chat.agent.release.set()
    await chat.status_is("completed")
    run = await chat.run(run_id)
    assert run["status"] == "completed"
    text = await chat.answer()
    assert text == run["output"]["text"] and text.startswith("Looking up the weather in Tokyo.")
    assert held["output"]["text"] in grew(await chat.log(), text)
    assert await chat.page.inner_text(".msg.user") == "What is the weather in Tokyo?"
    assert await chat.page.is_disabled("#stop") and await chat.page.is_enabled("#send")


async def test_stop_cancels_the_run_on_the_server_and_keeps_the_text(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 400, "delay_ms": 25, "tool": False}
    assert await chat.page.is_disabled("#stop")
    run_id = await chat.send()
    await chat.words_shown(5)
    assert await chat.page.is_enabled("#stop")
    await chat.page.click("#stop")
    await chat.status_is("cancelled")
    run = await chat.run(run_id)
    assert run["status"] == "cancelled"
    text = await chat.answer()
    assert text == run["output"]["text"] and len(text.split()) >= 5
    # Nothing rendered after the cancelled badge, and the server's run is over for good.
    log = await chat.log()
    after = log[next(i for i, e in enumerate(log) if e["status"] == "cancelled") :]
    assert {e["text"] for e in after} == {text}
    assert (await chat.run(run_id))["last_seq"] == run["last_seq"]
    await chat.page.wait_for_selector("#stop:disabled")
    assert await chat.page.is_enabled("#send")


async def test_reload_mid_run_renders_the_snapshot_and_resumes(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 90, "delay_ms": 25, "tool_ms": 50}
    chat.agent.hold_at = INTRO + 2 + 3  # after the tool call and three words of the answer
    run_id = await chat.send()
    await chat.agent.held.wait()
    held = await chat.until_seq(run_id, 1 + chat.agent.hold_at)
    await chat.page.reload()
    # At once, from the snapshot: the held text, the finished tool call, an active Stop.
    await chat.page.wait_for_function(f"t => ({ANSWER_JS})(-1) === t", arg=held["output"]["text"])
    assert (await chat.log())[0]["text"] == held["output"]["text"]
    assert await chat.page.get_attribute(".tool", "data-state") == "done"
    assert await chat.page.is_enabled("#stop")
    chat.agent.release.set()
    # A second reload while tokens flow: the snapshot and the stream meet with no gap or overlap.
    await chat.words_shown(len(held["output"]["text"].split()) + 5)
    await chat.page.reload()
    await chat.status_is("completed")
    run = await chat.run(run_id)
    assert await chat.answer() == run["output"]["text"]
    assert grew(await chat.log(), run["output"]["text"]), "the second reload came after the run"


async def test_offline_mid_run_then_online_completes_exactly(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 160, "delay_ms": 25, "tool": False}
    chat.agent.hold_at = 7  # "About Tokyo:" and five words
    run_id = await chat.send()
    await chat.agent.held.wait()
    await chat.words_shown(7)
    # Chromium's offline mode fails new requests but lets an open response flow on; a network
    # that really drops also breaks the open stream, so the proxy cuts it at the same moment.
    await chat.context.set_offline(True)
    assert chat.proxy.cut() >= 1
    await chat.page.wait_for_selector("#connection:has-text('Offline')")
    # The run goes on while the page is offline (held again eight events on, so still running).
    chat.agent.hold_again(7 + 8)
    await chat.agent.held.wait()
    run = await chat.until_seq(run_id, 1 + 7 + 8)
    assert run["status"] == "running"
    shown = await chat.answer()
    assert run["output"]["text"].startswith(shown) and len(shown) < len(run["output"]["text"])
    await chat.context.set_offline(False)
    chat.agent.release.set()
    await chat.status_is("completed")
    run = await chat.run(run_id)
    assert await chat.answer() == run["output"]["text"]
    assert len(run["output"]["text"].split()) == 2 + 160  # "About Tokyo:" + the answer
    resumed = [c.sent for c in chat.proxy.connections if b"/stream?" in c.sent]
    assert any(re.search(rb"(?im)^last-event-id: *[1-9]", request) for request in resumed)


async def test_tool_indicator_shows_while_the_tool_runs(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 5, "delay_ms": 0, "tool_ms": 0}
    chat.agent.hold_at = INTRO + 1  # inside the tool call: after tool_start, before tool_end
    await chat.send()
    await chat.agent.held.wait()
    running = await chat.page.wait_for_selector(".tool[data-state=running]")
    assert running is not None
    assert await running.inner_text() == "Calling get_weather(Tokyo)…"
    assert await chat.page.locator(".tool").count() == 1
    chat.agent.release.set()
    await chat.status_is("completed")
    assert await chat.page.locator(".tool[data-state=running]").count() == 0
    done = await chat.page.inner_text(".tool[data-state=done]")
    assert done.startswith("get_weather(") and done.endswith(") → Sunny, 22°C")


async def test_finished_tool_line_reads_the_same_live_and_after_reload(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 3, "delay_ms": 0, "tool_ms": 0}
    await chat.send()
    await chat.status_is("completed")
    live = await chat.page.inner_text(".tool[data-state=done]")
    await chat.page.reload()
    await chat.status_is("completed")
    assert (
        await chat.page.inner_text(".tool[data-state=done]") == "get_weather(Tokyo) → Sunny, 22°C"
    )
    assert live == "get_weather(Tokyo) → Sunny, 22°C"


async def test_thread_history_survives_reload(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 20, "delay_ms": 0, "tool_ms": 0}
    first = await chat.send("What is the weather in Paris?")
    await chat.status_is("completed")
    second = await chat.send("And what is the weather in London?")
    await chat.status_is("completed", 2)
    answers = [(await chat.run(run_id))["output"]["text"] for run_id in (first, second)]
    assert "Question 2" in answers[1]  # the agent saw the thread's history
    await chat.page.reload()
    await chat.status_is("completed", 2)
    users = await chat.page.locator(".msg.user").all_inner_texts()
    assert users == ["What is the weather in Paris?", "And what is the weather in London?"]
    assert [await chat.answer(0), await chat.answer(1)] == answers
    assert await chat.page.locator(".msg").count() == 4
    assert await chat.page.locator(".tool[data-state=done]").count() == 2


async def test_keyboard_enter_sends_and_escape_stops(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 400, "delay_ms": 25, "tool": False}
    message = chat.page.get_by_label("Message")
    await message.focus()
    await chat.page.keyboard.type("What is the weather in Paris?")
    await chat.page.keyboard.press("Enter")
    await chat.words_shown(4)
    stop = chat.page.get_by_role("button", name="Stop")
    assert await stop.is_enabled()
    assert await chat.page.inner_text(".msg.user") == "What is the weather in Paris?"
    await chat.page.keyboard.press("Escape")
    await chat.status_is("cancelled")
    run = await chat.run(await chat.run_id())
    assert run["status"] == "cancelled"
    assert await chat.answer() == run["output"]["text"]
    assert run["output"]["text"].startswith("About Paris:")


async def test_screenshot_mid_run(chat: Chat) -> None:
    """Regenerates docs/page-mid-run.png when STREAMCTL_SCREENSHOT is set."""
    chat.agent.demo = {"tokens": 40, "delay_ms": 0, "tool_ms": 0}
    chat.agent.hold_at = INTRO + 2 + 9
    run_id = await chat.send()
    await chat.agent.held.wait()
    held = await chat.until_seq(run_id, 1 + chat.agent.hold_at)
    await chat.page.wait_for_function(f"t => ({ANSWER_JS})(-1) === t", arg=held["output"]["text"])
    assert await chat.page.is_enabled("#stop") and await chat.page.is_disabled("#send")
    assert await chat.page.get_attribute(".msg.assistant .status", "data-status") == "running"
    await chat.page.fill("#message", "And in London?")
    if os.environ.get("STREAMCTL_SCREENSHOT"):
        await chat.page.screenshot(path=str(SCREENSHOT))
    chat.agent.release.set()
    await chat.status_is("completed")
