"""Stop -> ``done`` latency of each agent adapter, mid-token and mid-tool (a benchmark, not a test).

For each adapter (plain async generator, plain sync generator, OpenAI-compatible ``ChatAgent``
against the tests' fake OpenAI server, ``LangGraphAgent`` with the tests' scripted chat model,
and on Python 3.12 ``TenXGraphAgent`` with 10xGraph's ReactAgent on the fake OpenAI server),
a real streamctl server (uvicorn on a free port, in this process) runs the agent; a client
streams the run, and once it is mid-token (a few chunks arrived; the model streams a word every
50 ms) or mid-tool (``tool_start`` arrived; the tool takes a minute, or 1 s for the sync
generator, which cannot be interrupted), sends ``POST /v1/runs/{id}/stop`` and measures the time
until ``done`` arrives on the stream. It also counts the evidence that the work really stopped:
tools that observed their cancellation, upstream streams the fake server saw cut, model streams
cancelled, generators closed.

    .venv/bin/python scripts/bench_agents_stop.py [--stops 10]
    .venv312/bin/python scripts/bench_agents_stop.py   # adds 10xGraph (Python 3.12)

Client and servers share one event loop and the machine's 2 cores: read the figures as
upper bounds of what the adapters add, not as network latencies.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import uvicorn
from httpx_sse import aconnect_sse
from langchain_core.messages import AIMessage
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamctl import Settings, create_app
from streamctl.agents import Agent, AgentContext, GeneratorAgent
from streamctl.agents.langgraph import LangGraphAgent
from streamctl.agents.openai import ChatAgent
from streamctl.events import AgentEvent, ToolEnd, ToolStart
from tests.support.fake_openai import SECRET, FakeOpenAI, Turn, start_fake
from tests.support.langgraph_agents import ScriptedChatModel, call, react_graph

WORDS = " ".join(f"w{i}" for i in range(400))
Evidence = dict[str, int]


def tool_probe(evidence: Evidence, seconds: float = 60.0) -> Callable[[str], Any]:
    async def slow_tool(query: str) -> str:
        """Takes a long time."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            evidence["tool cancelled"] = evidence.get("tool cancelled", 0) + 1
            raise
        return "done"

    return slow_tool


def async_generator(evidence: Evidence, tool: bool) -> Agent:
    async def agent(ctx: AgentContext) -> AsyncIterator[str | AgentEvent]:
        try:
            if tool:
                yield ToolStart(name="slow_tool", args={}, call_id="c1")
                yield ToolEnd(
                    name="slow_tool", output=await tool_probe(evidence)("x"), call_id="c1"
                )
            for word in WORDS.split():
                await anyio.sleep(0.05)
                yield word + " "
        finally:
            evidence["generator closed"] = evidence.get("generator closed", 0) + 1

    return GeneratorAgent(agent)


def sync_generator(evidence: Evidence, tool: bool) -> Agent:
    def agent(ctx: AgentContext) -> Iterator[str | AgentEvent]:
        try:
            if tool:
                yield ToolStart(name="blocking_tool", args={}, call_id="c1")
                time.sleep(1.0)  # a blocking tool: Stop takes effect at the next yield
                yield ToolEnd(name="blocking_tool", output="done", call_id="c1")
            for word in WORDS.split():
                time.sleep(0.05)
                yield word + " "
        finally:
            evidence["generator closed"] = evidence.get("generator closed", 0) + 1

    return GeneratorAgent(agent)


def tenxgraph_agent(fake: FakeOpenAI, tool: Callable[[str], Any], clients: list[Any]) -> Agent:
    """10xGraph's ReactAgent on the fake server (Python 3.12, ``.venv312``)."""
    from streamctl.agents.tenxgraph import TenXGraphAgent
    from tests.support import tenxgraph_agents

    graph = tenxgraph_agents.react_graph(fake, [tool])
    clients.append(tenxgraph_agents.clients.pop())
    return TenXGraphAgent(graph)


ADAPTERS = ["async generator", "sync generator", "openai", "langgraph"]
if sys.version_info >= (
    3,
    12,
):  # 10xGraph needs it: .venv312/bin/python scripts/bench_agents_stop.py
    ADAPTERS.append("10xgraph")


async def serve(tg: anyio.abc.TaskGroup, agent: Agent, db: Path) -> tuple[str, uvicorn.Server]:
    settings = Settings.from_env({}, db=db, stop_timeout=10)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(create_app(settings, agent=agent), log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    tg.start_soon(server.serve, [sock])
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


async def one_stop(url: str, scenario: str) -> float:
    body = {"input": {"messages": [{"role": "user", "content": "go"}]}}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
            run_id = source.response.headers["x-run-id"]
            chunks = 0
            stopped_at = 0.0
            async with anyio.create_task_group() as tg:
                async for event in source.aiter_sse():
                    if event.event == "message_chunk":
                        chunks += 1
                    ready = chunks == 3 if scenario == "mid-token" else event.event == "tool_start"
                    if ready and not stopped_at:
                        stopped_at = time.perf_counter()
                        tg.start_soon(client.post, f"/v1/runs/{run_id}/stop")
                    if event.event == "done":
                        status = orjson.loads(event.data)["status"]
                        assert status == "cancelled", status
                        return (time.perf_counter() - stopped_at) * 1000
    raise AssertionError("the stream ended without done")


async def bench(stops: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for adapter in ADAPTERS:
            for scenario in ("mid-token", "mid-tool"):
                evidence: Evidence = {}
                samples = []
                async with anyio.create_task_group() as tg:
                    clients: list[AsyncOpenAI] = []
                    fakes: list[FakeOpenAI] = []
                    servers = []
                    for i in range(stops):
                        tool = scenario == "mid-tool"
                        agent: Agent
                        if adapter == "async generator":
                            agent = async_generator(evidence, tool)
                        elif adapter == "sync generator":
                            agent = sync_generator(evidence, tool)
                        elif adapter in ("openai", "10xgraph"):
                            turn = (
                                # 10xGraph 0.10 keeps only tool calls sent whole
                                Turn(tool_calls=[("slow_tool", '{"query": "x"}')], whole_calls=True)
                                if tool
                                else Turn(text=[w + " " for w in WORDS.split()], delay=0.05)
                            )
                            fake = FakeOpenAI([turn])
                            fakes.append(fake)
                            upstream = await start_fake(tg, fake)
                            servers.append(upstream.server)
                            if adapter == "10xgraph":
                                agent = tenxgraph_agent(fake, tool_probe(evidence), clients)
                            else:
                                client = AsyncOpenAI(
                                    base_url=fake.url, api_key=SECRET, max_retries=0
                                )
                                clients.append(client)
                                agent = ChatAgent("m", tools=[tool_probe(evidence)], client=client)
                        else:
                            reply = (
                                call("slow_tool", {"query": "x"}, "c1")
                                if tool
                                else AIMessage(WORDS)
                            )
                            model = ScriptedChatModel(replies=[reply], delay=0.05)
                            graph = react_graph(model, [tool_probe(evidence)])
                            agent = LangGraphAgent(graph)
                        url, server = await serve(
                            tg, agent, Path(tmp) / f"{adapter}-{scenario}-{i}.db"
                        )
                        servers.append(server)
                        samples.append(await one_stop(url, scenario))
                        if adapter == "langgraph" and not tool and model.cancelled.is_set():
                            evidence["model stream cancelled"] = (
                                evidence.get("model stream cancelled", 0) + 1
                            )
                    for fake in fakes:
                        if fake.cuts:
                            evidence["upstream saw the disconnect"] = (
                                evidence.get("upstream saw the disconnect", 0) + 1
                            )
                    for client in clients:
                        await client.close()
                    for server in servers:
                        server.should_exit = True
                rows.append((adapter, scenario, samples, dict(evidence)))
    print(f"{'adapter':16} {'scenario':9} {'n':>3} {'p50 ms':>8} {'max ms':>8}  work stopped")
    for adapter, scenario, samples, evidence in rows:
        proof = ", ".join(f"{k} {v}/{len(samples)}" for k, v in sorted(evidence.items()))
        p50, worst = statistics.median(samples), max(samples)
        print(f"{adapter:16} {scenario:9} {len(samples):3} {p50:8.1f} {worst:8.1f}  {proof}")
    print(f"threads alive at the end: {threading.active_count()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=10, help="stops per adapter and scenario")
    args = parser.parse_args()
    anyio.run(bench, args.stops)


if __name__ == "__main__":
    main()
