"""Real 10xGraph graphs for the adapter's tests (Python 3.12; imported only once ``tenxgraph`` is
known to be installed): its prebuilt ``ReactAgent`` (its ``Agent`` node calling an
OpenAI-compatible model, the fake of ``fake_openai``, and its ``ToolNode``), and plain function
nodes that stream nothing, wait, or loop. No network."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
from injectq import InjectQ
from tenxgraph.core.graph.compiled_graph import CompiledGraph
from tenxgraph.core.graph.state_graph import StateGraph
from tenxgraph.core.state import AgentState, Message
from tenxgraph.core.state.stream_emitter import StreamEmitter
from tenxgraph.prebuilt.agent.react import ReactAgent
from tenxgraph.storage.checkpointer.in_memory_checkpointer import InMemoryCheckpointer
from tenxgraph.utils.constants import END
from tenxgraph.utils.interrupt import interrupt

from .fake_openai import SECRET, FakeOpenAI


def react_graph(
    fake: FakeOpenAI, tools: list[Any], *, checkpointer: bool = False
) -> CompiledGraph[Any]:
    """The model (served by ``fake``), then its tool calls, until it answers without tools."""
    agent = ReactAgent[AgentState](
        model="fake-model",
        provider="openai",
        base_url=fake.url,
        api_key=SECRET,
        tools=tools,
        container=InjectQ(),  # each graph its own: 10xGraph's default container is global
    )
    clients.append(agent._agent.client)  # 10xGraph never closes the client it makes
    saver = InMemoryCheckpointer[AgentState]() if checkpointer else None  # type: ignore[no-untyped-call]
    return agent.compile(checkpointer=saver)


clients: list[Any] = []
"""The model clients of the graphs ``react_graph`` built: the tests close them."""


async def get_weather(location: str, emit: StreamEmitter) -> str:
    """The weather now in a city."""
    emit.progress("looking it up", data={"looking_up": location})
    # 10xGraph queues what a tool emits with call_soon_threadsafe: a tool that returns without
    # ever yielding to the loop has its progress dropped (the tool's result ends the queue
    # first). A real tool awaits its I/O here.
    await anyio.lowlevel.checkpoint()
    return f"Sunny, 22°C in {location}"


async def broken_tool(location: str) -> str:
    """Always fails."""
    raise RuntimeError(f"no weather service for {location}")


class Watched:
    """A node or tool that waits for ever (or ``seconds``), and says what happened to it."""

    def __init__(self, seconds: float = 3600) -> None:
        self.seconds = seconds
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.finished = False

    async def wait(self) -> None:
        self.started.set()
        try:
            await anyio.sleep(self.seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        self.finished = True

    def node(self) -> Any:
        async def slow(state: AgentState, config: dict[str, Any]) -> list[Message]:
            await self.wait()
            return [Message.text_message("Done waiting.", role="assistant")]

        return slow

    def tool(self) -> Any:
        async def slow_lookup(location: str) -> str:
            """Takes its time."""
            await self.wait()
            return "found"

        return slow_lookup


def one_node_graph(node: Any) -> CompiledGraph[Any]:
    graph = StateGraph[AgentState](container=InjectQ())
    graph.add_node("NODE", node)
    graph.set_entry_point("NODE")
    graph.add_edge("NODE", END)
    return graph.compile()


def booking_graph() -> CompiledGraph[Any]:
    """Asks the user (``interrupt``) before it books, then says what it did."""

    async def confirm(state: AgentState, config: dict[str, Any]) -> list[Message]:
        answer = interrupt({"question": "Book the table for 8?"})
        return [Message.text_message(f"Booked: {answer}.", role="assistant")]

    return one_node_graph(confirm)


def looping_graph(visits: list[int]) -> CompiledGraph[Any]:
    """A node that hands over to itself for ever, counting its visits."""

    async def again(state: AgentState, config: dict[str, Any]) -> list[Message]:
        visits.append(len(visits) + 1)
        return []

    graph = StateGraph[AgentState](container=InjectQ())
    graph.add_node("AGAIN", again)
    graph.set_entry_point("AGAIN")
    graph.add_edge("AGAIN", "AGAIN")
    return graph.compile()


def _served() -> CompiledGraph[Any]:
    return one_node_graph(
        lambda state: [Message.text_message("Hello from 10xGraph.", role="assistant")]
    )


graph = _served()
"""What ``streamctl serve --agent tests.support.tenxgraph_agents:graph`` serves."""
