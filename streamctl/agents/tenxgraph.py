"""A compiled 10xGraph graph (formerly AgentFlow) as an agent: ``pip install
'streamctl[tenxgraph]'``, on Python 3.12 or later, as 10xGraph requires.

    agent = TenXGraphAgent(graph)  # StateGraph(...).compile() or ReactAgent(...).compile()

The graph is streamed with ``astream`` (``ResponseGranularity.FULL``), and its chunks become
streamctl events:

- an assistant message streamed with ``delta=True``: its text blocks become ``message_chunk``s
  (one ``message_id`` per model message), its reasoning blocks ``reasoning_chunk``s;
- the model's final message (``delta=False``): its ``tools_calls`` (with their parsed
  ``ToolCallBlock`` arguments) become ``tool_start``s, its ``usages`` the run's usage, and its text
  a ``message_chunk`` when nothing was streamed for it (a node that returns a whole message);
- a ``role: "tool"`` message (its ``ToolResultBlock``) becomes the ``tool_end`` with the same call
  id; a failed tool (an ``error`` chunk, ``tool_failed``) a ``tool_end`` with ``{"error": ...}``;
- what a tool emits with its ``StreamEmitter`` (``tool_progress``, ...) becomes a ``custom`` event;
- ``interrupt(value)`` becomes an ``interrupt`` event and the run ends; the next run on the
  thread resumes the graph with ``config: {"resume": <answer>}`` (10xGraph's ``resume`` input).

The streamctl thread is the graph's ``thread_id``, the run's recursion limit its
``recursion_limit``. A graph compiled with a checkpointer keeps its own state, so only the run's
new messages are sent (plus the thread's history when the checkpointer has nothing for the
thread); a graph without one gets the thread's history as messages, tool calls and results
included.

Stop: 10xGraph's own server checks a stop flag between nodes only, so a long node finishes first.
Here Stop cancels the stream mid-node: it runs in a task of its own (``InTask``), cancelled and
awaited, and so are the tasks 10xGraph created inside it (it runs each tool in a task it does not
cancel when its consumer goes away): a running node or tool sees ``CancelledError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from injectq import InjectQ
from tenxgraph.core.exceptions.recursion_error import GraphRecursionError
from tenxgraph.core.graph.compiled_graph import CompiledGraph
from tenxgraph.core.state.message import Message as TenXMessage
from tenxgraph.core.state.message_block import (
    ReasoningBlock,
    TextBlock,
    ToolCallBlock,
    ToolResultBlock,
)
from tenxgraph.core.state.stream_chunks import StreamChunk, StreamEvent
from tenxgraph.storage.checkpointer.base_checkpointer import BaseCheckpointer
from tenxgraph.utils import ResponseGranularity

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

__all__ = ["GraphRecursionLimit", "TenXGraphAgent", "to_tenxgraph"]


class TenXGraphAgent:
    """A compiled 10xGraph graph (``StateGraph(...).compile()``)."""

    def __init__(self, graph: CompiledGraph[Any]) -> None:
        self.graph = graph

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return InTask(self._events(ctx), cancel_spawned=True)

    async def _input(self, ctx: AgentContext, config: dict[str, Any]) -> dict[str, Any]:
        if "resume" in ctx.config:
            return {"resume": ctx.config["resume"]}
        messages = ctx.messages
        if ctx.history:
            # 10xGraph always has a checkpointer (an in-memory one by default): the thread's
            # history is sent when it has nothing for the thread (a new process, say). Asked
            # where 10xGraph itself looks: its fast cache first, then the persistent store.
            saver = InjectQ.get_instance().try_get(BaseCheckpointer)
            kept = saver and (
                await saver.aget_state_cache(config) or await saver.aget_state(config)
            )
            if not kept or not kept.context:
                messages = [*ctx.history, *ctx.messages]
        return {"messages": to_tenxgraph(messages)}

    async def _events(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        # 10xGraph resolves its checkpointer, nodes and settings from the InjectQ container that
        # is current (a context variable): the graph's own, set here in the graph's task only,
        # so that several graphs in one process each run with theirs.
        container = getattr(getattr(self.graph, "_state_graph", None), "_container", None)
        if isinstance(container, InjectQ):
            container.activate()
        config: dict[str, Any] = {
            "thread_id": ctx.thread_id,
            "run_id": ctx.run_id,
            "recursion_limit": ctx.recursion_limit,
        }
        chunks = _Chunks()
        stream = self.graph.astream(
            await self._input(ctx, config), config, response_granularity=ResponseGranularity.FULL
        )
        try:
            async for chunk in stream:
                for event in chunks.events(chunk):
                    yield event
        except Exception as exc:
            # 10xGraph 0.10 fails to build its own recursion error (a pydantic ValidationError
            # escapes instead of GraphRecursionError): the step count says what happened.
            if isinstance(exc, GraphRecursionError) or chunks.out_of_steps:
                raise GraphRecursionLimit(
                    f"the graph took more than {ctx.recursion_limit} steps"
                ) from exc
            raise


def to_tenxgraph(messages: list[Message]) -> list[TenXMessage]:
    """The thread's messages as 10xGraph messages: an assistant message with its ``tools_calls``
    (and ``ToolCallBlock``s), then a tool message (a ``ToolResultBlock``) answering each."""
    out: list[TenXMessage] = []
    for message in messages:
        if message.role in ("user", "system"):
            out.append(TenXMessage.text_message(message.content, role=message.role))
        elif message.role == "assistant" and (message.content or message.tool_calls):
            blocks: list[Any] = [TextBlock(text=message.content)] if message.content else []
            blocks += [ToolCallBlock(id=c.id, name=c.name, args=c.args) for c in message.tool_calls]
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": orjson.dumps(c.args).decode()},
                }
                for c in message.tool_calls
            ]
            out.append(TenXMessage(role="assistant", content=blocks, tools_calls=calls or None))
        elif message.role == "tool" and message.tool_call_id is not None:
            result = ToolResultBlock(call_id=message.tool_call_id, output=message.content)
            meta = {"tool_call_id": message.tool_call_id, "function_name": message.name}
            out.append(TenXMessage(role="tool", content=[result], metadata=meta))
        # An empty assistant message (a run stopped before any text) says nothing; a tool
        # message that names no call answers nothing.
    return out


class _Chunks:
    """Turns one run's stream chunks into events, remembering what the run has sent."""

    def __init__(self) -> None:
        self.message_id: str | None = None
        """The model message being streamed (its deltas), until its final message."""
        self.ids: set[str] = set()
        """Message ids already used: a server may reuse one completion id for every call."""
        self.started: dict[str, str] = {}
        """Call id -> tool name."""
        self.ended: set[str] = set()
        self.interrupts: set[str] = set()
        self.out_of_steps = False
        """The graph reported as many steps as its recursion limit allows."""

    def events(self, chunk: StreamChunk) -> list[AgentEvent]:
        event, message, data = chunk.event, chunk.message, chunk.data or {}
        step, limit = data.get("step"), data.get("max_steps")
        if isinstance(step, int) and isinstance(limit, int):
            self.out_of_steps = step >= limit
        if event == StreamEvent.MESSAGE and message is not None:
            if message.role == "assistant":
                return self._delta(message) if message.delta else self._final(message)
            if message.role == "tool":
                return self._result(message)
            return []  # the input messages, echoed
        if event == StreamEvent.MESSAGE and data:
            return [Custom(name=str(data.get("status") or "custom"), data=_jsonable(data))]
        if event == StreamEvent.ERROR and data.get("status") == "tool_failed":
            call_id = str(data.get("tool_call_id") or "")
            return self._end(
                call_id, str(data.get("tool_name") or ""), {"error": data.get("error")}
            )
        if event == StreamEvent.UPDATES and data.get("status") == "interrupted":
            asked = data.get("interrupt") or {}
            interrupt_id = str(asked.get("id") or "")
            if interrupt_id in self.interrupts:
                return []
            self.interrupts.add(interrupt_id)
            value = _jsonable(asked.get("value"))
            return [Interrupt(value=value, interrupt_id=interrupt_id or None)]
        return []  # state snapshots, progress updates, a graph error (raised right after)

    def _delta(self, message: TenXMessage) -> list[AgentEvent]:
        if self.message_id is None:
            self.message_id = self._new_id(str(message.message_id))
        events: list[AgentEvent] = []
        for block in message.content:
            if isinstance(block, TextBlock) and block.text:
                events.append(MessageChunk(content=block.text, message_id=self.message_id))
            elif isinstance(block, ReasoningBlock) and block.summary:
                events.append(ReasoningChunk(content=block.summary, message_id=self.message_id))
        return events

    def _final(self, message: TenXMessage) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        if self.message_id is None:  # nothing streamed: a node returned a whole message
            text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
            if text:
                message_id = self._new_id(str(message.message_id))
                events.append(MessageChunk(content=text, message_id=message_id))
        self.message_id = None
        args = {b.id: b.args for b in message.content if isinstance(b, ToolCallBlock)}
        for call in message.tools_calls or ():
            function = call.get("function") or {}
            call_id, name = str(call.get("id") or ""), str(function.get("name") or "")
            if call_id in self.started:
                continue
            self.started[call_id] = name
            given = args.get(call_id)
            if given is None:
                given = _parse_args(function.get("arguments"))
            events.append(ToolStart(name=name, args=given, call_id=call_id))
        if message.usages is not None:
            usage = message.usages
            events.append(
                Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
            )
        return events

    def _result(self, message: TenXMessage) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                name = str(message.metadata.get("function_name") or "")
                output = {"error": block.output} if block.is_error else block.output
                events += self._end(block.call_id, name, output)
        return events

    def _end(self, call_id: str, name: str, output: Any) -> list[AgentEvent]:
        if call_id in self.ended:
            return []
        self.ended.add(call_id)
        name = name or self.started.get(call_id, "")
        return [ToolEnd(name=name, output=_jsonable(output), call_id=call_id)]

    def _new_id(self, message_id: str) -> str:
        unique, n = message_id, 1
        while unique in self.ids:
            n += 1
            unique = f"{message_id}-{n}"
        self.ids.add(unique)
        return unique


def _parse_args(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return args if isinstance(args, dict) else {}


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data; unknown types (a pydantic model) as their ``str``."""
    return orjson.loads(orjson.dumps(value, default=str))
