"""The page at `/` in a real headless Chromium (Playwright), against a real server.

The page sends only ``thread_id`` and ``input``, so the pace of its runs comes from ``Paced``: the
demo agent with the test's ``config.demo``, which can also hold a run after its k-th event until
the test releases it (an ``anyio.Event``), so "mid-run" is a state the test waits for, not a time.
Every page records what its last assistant bubble showed after each DOM change (``window.__log``),
so tests can assert on the states the user saw, not only the final one. What real agents emit
(Markdown, hostile HTML, reasoning, tool calls, custom events, interrupts) comes from scripted
agents; layout is checked by bounding rectangles (Stop at 360 px, the newest text and the status
above the composer, the offline banner on screen).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from httpx_sse import aconnect_sse
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from streamctl.agents import ScriptedAgent, Wait
from streamctl.events import Custom, Interrupt, MessageChunk, ReasoningChunk, ToolEnd, ToolStart

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
    agent: Any  # Paced, or a ScriptedAgent
    proxy: Proxy
    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

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


@asynccontextmanager
async def chat_page(
    browser: Browser, server: Server, agent: Any, width: int = 820, height: int = 640
) -> AsyncIterator[Chat]:
    """A fresh page (its own localStorage) on ``server``, through a proxy that can cut."""
    async with Proxy(server.port) as proxy:
        context = await browser.new_context(viewport={"width": width, "height": height})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        chat = Chat(server, agent, proxy, context, page)
        page.on("pageerror", lambda error: chat.errors.append(str(error)))
        page.on("request", lambda request: chat.requests.append(request.url))
        await page.add_init_script(RECORDER)
        await page.goto(proxy.url + "/")  # "load": app.js (a module) has run
        try:
            yield chat
        finally:
            await context.close()
    assert not chat.errors, chat.errors


@pytest.fixture
async def chat(serve: StartServer, browser: Browser) -> AsyncIterator[Chat]:
    """The page on a fresh server whose agent is the demo agent, paced by the test."""
    agent = Paced(tokens=40, delay_ms=25, tool_ms=150)
    server = await serve(agent=agent, retry_ms=200)
    async with chat_page(browser, server, agent) as chat:
        yield chat


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
    assert "question 2" in answers[1]  # the agent saw the thread's history
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


class Forecaster(ScriptedAgent):
    """A scripted agent with a name of its own, which the page must show."""

    name = "Forecaster"


# Markdown split mid-construct across chunks, then hostile output: raw HTML and a javascript: link.
MARKDOWN = [
    "# Fore",
    "cast\n\nIt is **sunny** and `22°C`.\n\n- morning: clear\n- after",
    "noon: [details](https://example.com/x?a=1&b=2)\n\n```python\nprint('<b>hi</b>')\n",
    '```\n\nSee <img src=x onerror="window.__pwned = 1"> and'
    " [click](javascript:window.__pwned=2) or [JS](JaVaScRiPt:window.__pwned=3)"
    " or [mail](mailto:ops@example.com).",
]


async def test_markdown_renders_as_nodes_and_agent_html_does_nothing(
    serve: StartServer, browser: Browser
) -> None:
    gate = anyio.Event()
    steps = [MessageChunk(content=c, message_id="m1") for c in MARKDOWN]
    agent = Forecaster([steps[0], steps[1], Wait(gate), *steps[2:]])
    server = await serve(agent=agent)
    async with chat_page(browser, server, agent) as chat:
        assert await chat.page.title() == "streamctl: chat with Forecaster"
        assert await chat.page.inner_text("#agent") == "Forecaster"
        await chat.send("Forecast?")
        # Mid-stream, the finished blocks are rendered; the block still growing is rebuilt.
        heading = chat.page.locator(".msg.assistant .text h1")
        await heading.wait_for()
        assert await heading.inner_text() == "Forecast"
        await chat.page.evaluate("window.__h1 = document.querySelector('.text h1')")
        gate.set()
        await chat.status_is("completed")
        page = chat.page
        text = page.locator(".msg.assistant .text")
        assert await page.evaluate("document.querySelector('.text h1') === window.__h1")
        assert await text.locator("strong").inner_text() == "sunny"
        assert await text.locator("p > code").inner_text() == "22°C"
        items = await text.locator("ul > li").all_inner_texts()
        assert items == ["morning: clear", "afternoon: details"]
        link = text.locator("li a")
        assert await link.get_attribute("href") == "https://example.com/x?a=1&b=2"
        assert await link.get_attribute("rel") == "noopener noreferrer"
        assert await link.get_attribute("target") == "_blank"
        code = text.locator("pre > code")
        assert await code.inner_text() == "print('<b>hi</b>')"
        assert await code.get_attribute("class") == "language-python"
        # The hostile parts: shown as text, no element made of them, nothing run or fetched.
        last = await text.locator("p").last.inner_text()
        assert last.startswith('See <img src=x onerror="window.__pwned = 1"> and click or JS')
        assert await page.locator("#log img, #log b, #log script").count() == 0
        hrefs = await page.eval_on_selector_all("#log a", "links => links.map((a) => a.href)")
        assert hrefs == ["https://example.com/x?a=1&b=2", "mailto:ops@example.com"]
        assert await text.locator(".unsafe-link").all_inner_texts() == ["click", "JS"]
        await text.locator(".unsafe-link").first.click()
        assert await page.evaluate("window.__pwned") is None
        assert not [url for url in chat.requests if url.endswith("/x")]


async def test_reasoning_tools_custom_events_and_interrupts_are_shown(
    serve: StartServer, browser: Browser
) -> None:
    agent = Forecaster(
        [
            ReasoningChunk(content="The user wants ", message_id="m1"),
            ReasoningChunk(content="rain data.", message_id="m1"),
            ToolStart(name="search", args={"query": "rain in Oslo", "limit": 3}, call_id="c9"),
            Custom(name="progress", data={"step": 1, "of": 2}),
            ToolEnd(name="search", output={"hits": 2}, call_id="c9"),
            MessageChunk(content="Two *rainy* days.", message_id="m1"),
            Interrupt(value={"question": "Book a table?"}, interrupt_id="i1"),
        ]
    )
    server = await serve(agent=agent)
    async with chat_page(browser, server, agent) as chat:
        await chat.send("Rain?")
        await chat.status_is("completed")
        page = chat.page
        for when in ("live", "after reload"):
            reasoning = page.locator(".msg.assistant details.reasoning")
            assert await reasoning.get_attribute("open") is None, when  # collapsed
            assert await reasoning.locator("summary").inner_text() == "Reasoning"
            assert not await reasoning.locator(".reasoning-text").is_visible()
            await reasoning.locator("summary").click()
            assert (
                await reasoning.locator(".reasoning-text").inner_text()
                == "The user wants rain data."
            )
            tool = page.locator(".tool[data-call=c9]")
            assert await tool.get_attribute("data-state") == "done"
            assert await tool.inner_text() == 'search(rain in Oslo, 3) → {"hits":2}'
            assert await page.locator(".text em").inner_text() == "rainy"
            interrupt = await page.inner_text(".interrupt")
            assert interrupt == 'Waiting for your answer: {"question":"Book a table?"}'
            if when == "live":  # custom events are not part of a run's snapshot
                custom = page.locator(".custom[data-name=progress]")
                assert await custom.inner_text() == 'progress {"step":1,"of":2}'
                await page.reload()
                await chat.status_is("completed")


async def test_narrow_screen_stop_is_inside_the_viewport_and_clickable(
    serve: StartServer, browser: Browser
) -> None:
    agent = Paced(tokens=400, delay_ms=25, tool=False)
    server = await serve(agent=agent)
    async with chat_page(browser, server, agent, width=360, height=640) as chat:
        await chat.send()
        await chat.words_shown(4)
        box = await chat.page.locator("#stop").bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, box
        assert box["y"] >= 0 and box["y"] + box["height"] <= 640, box
        hit = await chat.page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y)?.id",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert hit == "stop"
        assert await chat.page.evaluate("document.documentElement.scrollWidth") <= 360
        await chat.page.click("#stop")
        await chat.status_is("cancelled")
        assert (await chat.run(await chat.run_id()))["status"] == "cancelled"


# Bounding rectangles of the newest text (its last line box), the status badge, the transcript
# and the composer, in viewport coordinates.
RECTS = """() => {
  const view = [...document.querySelectorAll(".msg.assistant")].at(-1);
  const texts = [...view.querySelectorAll(".text")];
  const range = document.createRange();
  range.selectNodeContents(texts.at(-1));
  const box = (r) => ({ top: r.top, bottom: r.bottom });
  return {
    text: box([...range.getClientRects()].at(-1)),
    badge: box(view.querySelector(".status").getBoundingClientRect()),
    transcript: box(document.getElementById("transcript").getBoundingClientRect()),
    composer: box(document.getElementById("composer").getBoundingClientRect()),
    notice: box(document.getElementById("connection").getBoundingClientRect()),
    height: window.innerHeight,
  };
}"""


def in_view(rects: dict[str, Any], *names: str) -> None:
    """Each named box lies inside the transcript's visible part, so above the composer."""
    top, bottom = rects["transcript"]["top"], rects["transcript"]["bottom"]
    assert bottom <= rects["composer"]["top"] + 0.5, rects
    for name in names:
        assert top - 0.5 <= rects[name]["top"] and rects[name]["bottom"] <= bottom + 0.5, rects


async def test_the_newest_text_and_status_stay_in_view_above_the_composer(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 300, "delay_ms": 0, "tool": False}
    chat.agent.hold_at = 2 + 250  # far more text than the screen holds
    run_id = await chat.send()
    await chat.agent.held.wait()
    held = await chat.until_seq(run_id, 1 + chat.agent.hold_at)
    await chat.page.wait_for_function(f"t => ({ANSWER_JS})(-1) === t", arg=held["output"]["text"])
    overflow = "(() => { const t = document.getElementById('transcript');"
    overflow += " return t.scrollHeight > t.clientHeight; })()"
    assert await chat.page.evaluate(overflow)
    in_view(await chat.page.evaluate(RECTS), "text", "badge")
    # Offline: the notice is a banner at the top of the screen, not below the conversation.
    await chat.context.set_offline(True)
    await chat.page.wait_for_selector("#connection:has-text('Offline')")
    rects = await chat.page.evaluate(RECTS)
    assert 0 <= rects["notice"]["top"] and rects["notice"]["bottom"] <= rects["height"] / 4
    await chat.context.set_offline(False)
    chat.agent.release.set()
    await chat.status_is("completed")
    in_view(await chat.page.evaluate(RECTS), "text", "badge")


async def test_a_reader_who_scrolled_up_is_left_where_they_are(chat: Chat) -> None:
    chat.agent.demo = {"tokens": 500, "delay_ms": 0, "tool": False}
    chat.agent.hold_at = 2 + 400
    await chat.send()
    await chat.agent.held.wait()
    await chat.words_shown(2 + 400)
    scrolled = "(() => { const t = document.getElementById('transcript');"
    scrolled += " return [t.scrollTop, t.scrollHeight - t.clientHeight]; })()"
    top, most = await chat.page.evaluate(scrolled)
    assert (
        abs(top - most) < 1 and most > 100
    )  # it followed the text so far; the reader now scrolls up
    await chat.page.evaluate("document.getElementById('transcript').scrollTop = 0")
    chat.agent.release.set()
    await chat.status_is("completed")
    assert await chat.page.evaluate("document.getElementById('transcript').scrollTop") == 0


# Every construct, with a list that goes on after a blank line, a fence left open until late, and
# text after it; streamed in chunks of any size it must end as the whole text rendered at once.
STREAMED = (
    "# Title\n\nSome *em* and **strong** and `code` and ~~old~~ text,\nnext line.\n\n"
    "- one\n- two\n  more of two\n\n- three\n\n1. first\n2. second\n\n> quoted\n> *twice*\n\n"
    "---\n\n```js\nlet a = '<b>';\n\n```\n\n2024. was a year; see https://example.com/a_(b)."
    " [x](http://e.x) [y](data:text/html,hi) snake_case_name and __dunder__.\n\n~~~\nopen fence"
)
STREAM_JS = """async ([text, sizes]) => {
  const { appendMarkdown, renderMarkdown } = await import("./static/markdown.js");
  const whole = document.createElement("div");
  renderMarkdown(whole, text);
  return [whole.innerHTML, sizes.map((size) => {
    const div = document.createElement("div");
    for (let i = 0; i < text.length; i += size) appendMarkdown(div, text.slice(i, i + size));
    return div.innerHTML;
  })];
}"""


async def test_markdown_streamed_in_any_chunks_ends_as_rendered_at_once(chat: Chat) -> None:
    whole, streamed = await chat.page.evaluate(STREAM_JS, [STREAMED, [1, 2, 3, 7, 64]])
    assert all(html == whole for html in streamed)
    for part in (
        "<h1>Title</h1>",
        "<em>em</em>",
        "<strong>strong</strong>",
        "<code>code</code>",
        "<del>old</del>",
        " text,<br>next line.</p>",
        "<li>two<br>more of two</li><li>three</li></ul>",
        "<ol><li>first</li><li>second</li></ol>",
        "<blockquote><p>quoted<br><em>twice</em></p></blockquote>",
        "<hr>",
        "<pre><code class=\"language-js\">let a = '&lt;b&gt;';\n</code></pre>",
        '<ol start="2024"><li>was a year; see <a href="https://example.com/a_(b)"',
        '<span class="unsafe-link" title=',
        "snake_case_name and <strong>dunder</strong>.",
        "<pre><code>open fence</code></pre>",
    ):
        assert part in whole, (part, whole)
