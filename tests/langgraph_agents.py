"""Real LangGraph graphs for the adapter's tests, driven by a scripted LangChain chat model that
streams its replies token by token (and its tool calls in split chunks) with usage, like a
provider's model does. No network. ``--agent tests.langgraph_agents:graph`` serves one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import interrupt
from pydantic import ConfigDict, Field


class ScriptedChatModel(BaseChatModel):
    """Answers each call with the next of ``replies``, streamed one word per chunk."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    replies: list[AIMessage]
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    """The messages of every call, for the tests."""
    hold: anyio.Event | None = None
    """When set: stream the first word, then wait for this event (Stop mid-token)."""
    holding: anyio.Event = Field(default_factory=anyio.Event)
    delay: float = 0.0
    """Seconds between two words (a model's pace)."""
    cancelled: anyio.Event = Field(default_factory=anyio.Event)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.replies.pop(0))])

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError("async only")

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.seen.append(list(messages))
        reply = self.replies.pop(0) if self.replies else AIMessage("(no more replies)")
        words = str(reply.content).split(" ") if reply.content else []
        try:
            for i, word in enumerate(words):
                if self.delay:
                    await anyio.sleep(self.delay)
                text = word if i == len(words) - 1 else word + " "
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                if i == 0 and self.hold is not None:
                    self.holding.set()
                    await self.hold.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        for index, call in enumerate(reply.tool_calls):
            args = orjson.dumps(call["args"]).decode()
            half = len(args) // 2
            for piece, first in ((args[:half], True), (args[half:], False)):
                part = {
                    "name": call["name"] if first else None,
                    "args": piece,
                    "id": call["id"] if first else None,
                    "index": index,
                }
                yield ChatGenerationChunk(
                    message=AIMessageChunk(content="", tool_call_chunks=[part])
                )
        usage = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))


def react_graph(
    model: ScriptedChatModel, tools: Sequence[BaseTool | Any], *, checkpointer: bool = False
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The usual agent loop: the model, then its tool calls, until it answers without tools."""

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(list(tools)))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver() if checkpointer else None)


def call(name: str, args: dict[str, Any], call_id: str, text: str = "") -> AIMessage:
    return AIMessage(text, tool_calls=[{"name": name, "args": args, "id": call_id}])


async def get_weather(location: str) -> str:
    """The weather now in a city."""
    get_stream_writer()({"name": "progress", "data": {"looking_up": location}})
    get_stream_writer()(["anything", 1])
    return f"Sunny, 22°C in {location}"


def booking_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    """Asks the user (``interrupt``) before it books, then says what it did."""

    async def confirm(state: MessagesState) -> dict[str, Any]:
        answer = interrupt({"question": "Book the table for 8?"})
        return {"messages": [AIMessage(f"Booked: {answer}.")]}

    builder = StateGraph(MessagesState)
    builder.add_node("confirm", confirm)
    builder.add_edge(START, "confirm")
    builder.add_edge("confirm", END)
    return builder.compile(checkpointer=InMemorySaver())


def _served() -> CompiledStateGraph[Any, Any, Any, Any]:
    replies = [
        call("get_weather", {"location": "Paris"}, "call_p", "Checking."),
        AIMessage("Sunny in Paris."),
    ]
    return react_graph(ScriptedChatModel(replies=replies), [get_weather])


graph = _served()
"""What ``streamctl serve --agent tests.langgraph_agents:graph`` serves (one run's worth)."""
