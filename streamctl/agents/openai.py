"""Any OpenAI-compatible chat model as an agent (OpenAI, Ollama, vLLM, llama.cpp's server, ...).

    agent = ChatAgent(model="gpt-4o-mini", tools=[get_weather], system="Be brief.")

Built on the official ``openai`` SDK (``pip install 'streamctl[openai]'``), streaming with usage:
text deltas become ``message_chunk``s (reasoning deltas, where a server sends them as
``reasoning_content`` or ``reasoning``, ``reasoning_chunk``s); tool-call deltas are assembled into
a ``tool_start``, the Python tool runs (an async one in the run's task, a sync one in a worker
thread), its result is a ``tool_end``, and the model's next turn follows, until it answers without
calling tools. The usage the API reports becomes ``done``'s ``usage``.

Stop cancels the run's task where it waits: reading the model's stream (the HTTP response is
closed, so the server sees the disconnect and stops generating), or awaiting a tool (which sees
the cancellation). A sync tool cannot be interrupted: the run ends when it returns.

A tool that raises, or that the model calls with arguments that do not validate, answers the model
with ``{"error": ...}`` (the model can retry); a failure of the model server fails the run with
``model_rate_limited``, ``model_unreachable`` or ``model_error`` (details in the server's log
only: an upstream error text can quote request data).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import openai
import orjson
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, ValidationError, create_model

from ..errors import ModelError, ModelRateLimited, ModelUnreachable, TooManyTurns
from ..events import AgentEvent, MessageChunk, ReasoningChunk, ToolEnd, ToolStart, Usage
from .base import AgentContext, Message

__all__ = ["ChatAgent", "ModelError", "ModelRateLimited", "ModelUnreachable", "TooManyTurns"]

logger = logging.getLogger("streamctl.agents.openai")


class Tool:
    """A Python function the model may call: its JSON Schema comes from its signature (pydantic),
    its description from its docstring."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name: str = fn.__name__
        self.is_async = inspect.iscoroutinefunction(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {
            name: (hints.get(name, Any), ... if p.default is p.empty else p.default)
            for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)  # no schema for *args, **kwargs
        }
        self.args: type[BaseModel] = create_model(self.name, **fields)
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        self.spec = {
            "type": "function",
            "function": {
                "name": self.name,
                "description": inspect.getdoc(fn) or "",
                "parameters": schema,
            },
        }

    async def __call__(self, args: dict[str, Any]) -> Any:
        """The tool's result, or ``{"error": ...}`` for the model. Cancellation propagates."""
        try:
            valid = self.args.model_validate(args)
        except ValidationError as exc:
            return {"error": f"invalid arguments for {self.name}: {exc.errors()[0]['msg']}"}
        kwargs = {name: getattr(valid, name) for name in type(valid).model_fields}
        try:
            if self.is_async:
                return await self.fn(**kwargs)
            # Not abandoned on Stop: the run ends when the thread returns, never leaving it behind.
            return await anyio.to_thread.run_sync(functools.partial(self.fn, **kwargs))
        except Exception as exc:  # the tool's failure is the model's to handle
            logger.info("tool %s raised", self.name, exc_info=True)
            return {"error": f"{type(exc).__name__}: {exc}"}


@dataclass
class _Call:
    """A tool call as it streams in: id and name first, arguments in pieces."""

    id: str = ""
    name: str = ""
    arguments: str = ""


class ChatAgent:
    """An OpenAI-compatible chat model, with Python functions as its tools.

    ``client`` defaults to ``AsyncOpenAI()``, which reads ``OPENAI_BASE_URL`` and
    ``OPENAI_API_KEY``; ``options`` go to every ``chat.completions.create`` call (e.g.
    ``temperature``)."""

    def __init__(
        self,
        model: str,
        *,
        tools: Sequence[Callable[..., Any]] = (),
        system: str | None = None,
        client: AsyncOpenAI | None = None,
        **options: Any,
    ) -> None:
        self.model = model
        self.tools = {tool.name: tool for tool in map(Tool, tools)}
        self.system = system
        # A local server (Ollama, llama.cpp) needs no key, but the SDK refuses to start without.
        self.client = client or AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "none")
        self.options = options

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self._run(ctx)

    async def _run(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        messages = self._messages([*ctx.history, *ctx.messages])
        for _ in range(ctx.recursion_limit):
            calls: list[_Call] = []
            text: list[str] = []
            async for event in self._turn(messages, calls, text):
                yield event
            if not calls:
                return
            messages.append(
                {
                    "role": "assistant",
                    "content": "".join(text) or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in calls
                    ],
                }
            )
            for call in calls:
                args, output = _parse_args(call.arguments), None
                yield ToolStart(name=call.name, args=args or {}, call_id=call.id)
                tool = self.tools.get(call.name)
                if tool is None:
                    output = {"error": f"there is no tool named {call.name!r}"}
                elif args is None:
                    output = {"error": "the arguments are not a JSON object"}
                else:
                    output = _jsonable(await tool(args))
                yield ToolEnd(name=call.name, output=output, call_id=call.id)
                content = output if isinstance(output, str) else orjson.dumps(output).decode()
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
        raise TooManyTurns(f"the model called tools in more than {ctx.recursion_limit} turns")

    def _messages(self, messages: list[Message]) -> list[dict[str, Any]]:
        """The conversation in the API's shape: an assistant message with its ``tool_calls``,
        then a ``tool`` message answering each."""
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        for message in messages:
            if message.role == "tool":
                if message.tool_call_id is None:
                    continue  # a result that names no call: the API refuses it
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": message.tool_call_id,
                        "content": message.content,
                    }
                )
            elif message.role == "assistant" and message.tool_calls:
                out.append(
                    {
                        "role": "assistant",
                        "content": message.content or None,
                        "tool_calls": [
                            {
                                "id": call.id,
                                "type": "function",
                                "function": {
                                    "name": call.name,
                                    "arguments": orjson.dumps(call.args).decode(),
                                },
                            }
                            for call in message.tool_calls
                        ],
                    }
                )
            elif message.role != "assistant" or message.content:
                # An empty assistant message (a run stopped before any text) says nothing.
                out.append({"role": message.role, "content": message.content})
        return out

    async def _turn(
        self, messages: list[dict[str, Any]], calls: list[_Call], text: list[str]
    ) -> AsyncIterator[AgentEvent]:
        """One model call: stream its text, collect its tool calls into ``calls``."""
        message_id = uuid.uuid4().hex[:12]
        extra: dict[str, Any] = (
            {"tools": [t.spec for t in self.tools.values()]} if self.tools else {}
        )
        by_index: dict[int, _Call] = {}
        stream: AsyncStream[ChatCompletionChunk] | None = None
        # Plain dicts, as the API takes them (the SDK's TypedDicts would only restate them).
        create: Any = self.client.chat.completions.create
        try:
            stream = await create(
                model=self.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **extra,
                **self.options,
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    yield Usage(
                        input_tokens=chunk.usage.prompt_tokens or 0,
                        output_tokens=chunk.usage.completion_tokens or 0,
                    )
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    reasoning = getattr(delta, "reasoning_content", None) or getattr(
                        delta, "reasoning", None
                    )
                    if isinstance(reasoning, str) and reasoning:
                        yield ReasoningChunk(content=reasoning, message_id=message_id)
                    if delta.content:
                        text.append(delta.content)
                        yield MessageChunk(content=delta.content, message_id=message_id)
                    for part in delta.tool_calls or ():
                        index = getattr(part, "index", None)
                        if not isinstance(index, int):  # some servers leave it out
                            index = len(by_index) if part.id else max(by_index, default=0)
                        call = by_index.setdefault(index, _Call())
                        call.id = part.id or call.id
                        if part.function is not None:
                            call.name += part.function.name or ""
                            call.arguments += part.function.arguments or ""
        except openai.APIError as exc:
            raise _model_error(exc) from exc
        finally:
            if stream is not None:
                # Shielded: on Stop this runs in a cancelled scope, and the response must still
                # be closed, so the model server sees the disconnect and stops generating.
                with anyio.move_on_after(5, shield=True):
                    await stream.close()
        for index in sorted(by_index):
            call = by_index[index]
            call.id = call.id or "call_" + uuid.uuid4().hex[:12]
            calls.append(call)


def _parse_args(arguments: str) -> dict[str, Any] | None:
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return None
    return args if isinstance(args, dict) else None


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (what a ``tool_end`` can carry); unknown types as their ``str``."""
    return orjson.loads(orjson.dumps(value, default=str))


def _model_error(exc: openai.APIError) -> ModelError:
    # The whole upstream error goes to the server's log; the run's (client-visible) error says
    # only what kind of failure it was: an upstream message can quote keys or request data.
    logger.warning("the model server failed: %r", exc)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return ModelRateLimited("the model server is rate limiting requests (HTTP 429)")
        return ModelError(f"the model server answered HTTP {exc.status_code}")
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnreachable("the connection to the model server failed")
    return ModelError("the model server reported an error while streaming")
