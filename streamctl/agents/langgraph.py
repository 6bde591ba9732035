"""A compiled LangGraph graph as an agent (``pip install 'streamctl[langgraph]'``).

    agent = LangGraphAgent(graph)      # or: streamctl serve --agent mymodule:graph

The graph is streamed with ``stream_mode=["messages", "updates", "custom"]`` (and subgraphs):

- a model's text chunks become ``message_chunk``s (one ``message_id`` per model message), its
  reasoning blocks ``reasoning_chunk``s, and its ``usage_metadata`` the run's usage;
- a model message's tool calls (complete, from the node's update) become ``tool_start``s, and each
  ``ToolMessage`` a ``tool_end`` with the same call id;
- whatever a node writes with ``get_stream_writer()`` becomes a ``custom`` event (a dict
  ``{"name": ..., "data": ...}`` keeps its name; anything else is named ``custom``);
- ``interrupt(value)`` becomes an ``interrupt`` event, and the run ends; the next run on the
  thread resumes the graph with ``config: {"resume": <answer>}`` (``Command(resume=...)``).

The streamctl thread is the graph's ``thread_id``. A graph compiled with a checkpointer keeps its
own state, so only the run's new messages are sent (plus the thread's history, when the
checkpointer has nothing for the thread); a graph without one gets the thread's history as
messages. The run's recursion limit is passed as LangGraph's ``recursion_limit``.

Stop: LangGraph runs its nodes in asyncio tasks of its own. Iterating ``astream`` in the run's
task and cancelling that task leaves a node's task running (orphaned); so the stream runs in a
task of its own, relayed to the run through a bounded queue, and Stop cancels that task and waits
for it: LangGraph then cancels its nodes, and a running tool sees the cancellation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError
from langgraph.pregel import Pregel
from langgraph.types import Command

from ..errors import GraphRecursionLimit
from ..events import (
    AgentEvent,
    Custom,
    Interrupt,
    MessageChunk,
    ReasoningChunk,
    ToolEnd,
    ToolStart,
    Usage,
)
from .base import AgentContext, Message
from .in_task import InTask

__all__ = ["GraphRecursionLimit", "LangGraphAgent"]


class LangGraphAgent:
    """A compiled LangGraph graph (``StateGraph(...).compile()``) whose state has ``messages``."""

    def __init__(self, graph: Pregel[Any, Any, Any, Any]) -> None:
        self.graph = graph

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return InTask(self._events(ctx))

    async def _input(self, ctx: AgentContext, config: RunnableConfig) -> Any:
        if "resume" in ctx.config:
            return Command(resume=ctx.config["resume"])
        messages = ctx.messages
        if not isinstance(self.graph.checkpointer, BaseCheckpointSaver):
            messages = [*ctx.history, *ctx.messages]
        elif ctx.history and not (await self.graph.aget_state(config)).values:
            messages = [*ctx.history, *ctx.messages]  # the checkpointer lost the thread
        return {"messages": to_langchain(messages)}

    async def _events(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        config: RunnableConfig = {
            "configurable": {"thread_id": ctx.thread_id},
            "recursion_limit": ctx.recursion_limit,
        }
        seen = _Seen()
        # With subgraphs, a graph that runs another graph as a node (a supervisor and its agents)
        # streams the inner graph's tokens too; its tool calls, reported again in the outer
        # graph's update, are sent once (by call id).
        stream = self.graph.astream(
            await self._input(ctx, config),
            config,
            stream_mode=["messages", "updates", "custom"],
            subgraphs=True,
        )
        try:
            async for _namespace, mode, chunk in stream:
                if mode == "messages":
                    for event in _from_message(chunk[0]):
                        yield event
                elif mode == "updates":
                    for event in _from_update(chunk, seen):
                        yield event
                elif mode == "custom":
                    yield _custom(chunk)
        except GraphRecursionError as exc:
            raise GraphRecursionLimit(
                f"the graph took more than {ctx.recursion_limit} steps"
            ) from exc


def to_langchain(messages: list[Message]) -> list[BaseMessage]:
    """The thread's messages as LangChain messages: an ``AIMessage`` with its ``tool_calls``,
    then a ``ToolMessage`` answering each."""
    out: list[BaseMessage] = []
    for message in messages:
        if message.role == "user":
            out.append(HumanMessage(message.content))
        elif message.role == "system":
            out.append(SystemMessage(message.content))
        elif message.role == "assistant" and (message.content or message.tool_calls):
            calls = [
                {"id": call.id, "name": call.name, "args": call.args, "type": "tool_call"}
                for call in message.tool_calls
            ]
            out.append(AIMessage(message.content, tool_calls=calls))
        elif message.role == "tool" and message.tool_call_id is not None:
            out.append(
                ToolMessage(message.content, tool_call_id=message.tool_call_id, name=message.name)
            )
        # An empty assistant message (a run stopped before any text) says nothing; a tool
        # message that names no call answers nothing.
    return out


def _from_message(message: Any) -> list[AgentEvent]:
    """A model's streamed chunk (or a whole message a node returned) from ``messages`` mode."""
    if not isinstance(message, AIMessage | AIMessageChunk):
        return []  # tool results come from `updates`, with their call
    events: list[AgentEvent] = []
    message_id = str(message.id)
    content = message.content
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    for block in blocks:
        if isinstance(block, str):
            block = {"type": "text", "text": block}
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            events.append(MessageChunk(content=str(block["text"]), message_id=message_id))
        elif kind in ("reasoning", "thinking") and block.get(kind):
            events.append(ReasoningChunk(content=str(block[kind]), message_id=message_id))
    usage = message.usage_metadata
    if usage:
        events.append(
            Usage(
                input_tokens=usage.get("input_tokens", 0),
                output_tokens=usage.get("output_tokens", 0),
            )
        )
    return events


class _Seen:
    """What a run has sent of tool calls and interrupts (a subgraph's are reported twice)."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}
        """Call id -> tool name (for a ``ToolMessage`` without a name)."""
        self.ended: set[str] = set()
        self.interrupts: set[str] = set()


def _from_update(update: Any, seen: _Seen) -> list[AgentEvent]:
    """Tool calls and results, and interrupts, from an ``updates`` chunk ``{node: update}``."""
    events: list[AgentEvent] = []
    if not isinstance(update, dict):
        return events
    for node, value in update.items():
        if node == "__interrupt__":
            for interrupt in value:
                interrupt_id = getattr(interrupt, "id", None)
                key = interrupt_id or repr(interrupt.value)
                if key not in seen.interrupts:
                    seen.interrupts.add(key)
                    asked = _jsonable(interrupt.value)
                    events.append(Interrupt(value=asked, interrupt_id=interrupt_id))
            continue
        found = value.get("messages") if isinstance(value, dict) else None
        for message in found if isinstance(found, list) else [found]:
            if isinstance(message, AIMessage):
                for call in message.tool_calls:
                    call_id = call["id"] or ""
                    if call_id not in seen.started:
                        seen.started[call_id] = call["name"]
                        start = ToolStart(name=call["name"], args=call["args"], call_id=call_id)
                        events.append(start)
            elif isinstance(message, ToolMessage) and message.tool_call_id not in seen.ended:
                call_id = message.tool_call_id
                seen.ended.add(call_id)
                name = message.name or seen.started.get(call_id, "")
                output = _jsonable(message.content)
                events.append(ToolEnd(name=name, output=output, call_id=call_id))
    return events


def _custom(chunk: Any) -> Custom:
    if (
        isinstance(chunk, dict)
        and isinstance(chunk.get("name"), str)
        and set(chunk) <= {"name", "data"}
    ):
        return Custom(name=chunk["name"], data=_jsonable(chunk.get("data")))
    return Custom(name="custom", data=_jsonable(chunk))


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data; unknown types (a pydantic model, a LangChain object) as ``str``."""
    return orjson.loads(orjson.dumps(value, default=str))
