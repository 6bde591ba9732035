"""A thread's conversation: each run's input, then what the run produced, as chat messages.

A run's output (``RunOutput.as_json``: its messages and tool calls, each with the seq it began at)
is turned back into the messages a chat model exchanged, in the order the run produced them:

- each model message (a ``message_id``) is one assistant message;
- the tool calls that follow a message, before any of their results came back, are that
  message's ``tool_calls`` (calls made before any text get an assistant message of their own,
  without content); a call made after an earlier call's result starts a new assistant message;
- each call's result is a ``tool`` message right after the assistant message that made it,
  in the order the results came (``tool_call_id``, ``name``, the result as text).

A call that never returned (the run was stopped mid-tool) is left out, with no result: the model
never saw one, and OpenAI-compatible APIs refuse a call that no tool message answers. A run that
produced no message at all (stopped or failed first) still answers with an empty assistant
message, so user turns keep alternating. The same messages are the agent's ``ctx.history`` and
``GET /v1/threads/{id}``'s ``messages``, built from the run's stored output (which outlives
its events' retention).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .agents.base import Message, MessageToolCall


def output_messages(output: Mapping[str, Any] | None) -> list[Message]:
    """What a run produced, as assistant and tool messages in order (never empty)."""
    entries: list[tuple[int, Mapping[str, Any], bool]] = []
    if output is not None:
        entries += [(m["seq"], m, False) for m in output.get("messages", ())]
        entries += [(c["seq"], c, True) for c in output.get("tool_calls", ())]
    entries.sort(key=lambda entry: entry[0])
    turns: list[tuple[str, list[Mapping[str, Any]]]] = []
    """Each assistant message: its text and the calls it made."""
    for seq, entry, is_call in entries:
        if not is_call:
            turns.append((entry["content"], []))
        elif turns and not any(_ended(call) < seq for call in turns[-1][1]):
            turns[-1][1].append(entry)
        else:  # no message yet, or an earlier call of the message has returned already
            turns.append(("", [entry]))
    messages: list[Message] = []
    for content, calls in turns:
        answered = [c for c in calls if _ended(c) != _NEVER]  # in the order they were made
        if not content and not answered:
            continue
        made = [MessageToolCall(id=c["call_id"], name=c["name"], args=c["args"]) for c in answered]
        messages.append(Message(role="assistant", content=content, tool_calls=made))
        messages += [
            Message(
                role="tool", content=_text(c["output"]), tool_call_id=c["call_id"], name=c["name"]
            )
            for c in sorted(answered, key=_ended)  # in the order they came back
        ]
    return messages or [Message(role="assistant", content="")]


def run_messages(input: Mapping[str, Any], output: Mapping[str, Any] | None) -> list[Message]:
    """A run's turn of the conversation: its input messages, then what it produced."""
    return [*(Message(**m) for m in input["messages"]), *output_messages(output)]


def trim_window(messages: list[Message]) -> list[Message]:
    """``messages`` (a window of the history) without the tool results it begins with: their
    calls fell out of the window, and a result without its call is refused by chat APIs."""
    start = 0
    while start < len(messages) and messages[start].role == "tool":
        start += 1
    return messages[start:]


_NEVER = 1 << 62
"""The end seq of a call that never returned: after every seq."""


def _ended(call: Mapping[str, Any]) -> int:
    """The seq of the call's result. Outputs stored before ``end_seq`` existed had a result
    whenever they had an output, right after the call."""
    if "end_seq" in call:
        end = call["end_seq"]
        return _NEVER if end is None else int(end)
    return _NEVER if call.get("output") is None else int(call["seq"])


def _text(output: Any) -> str:
    """A tool's result as a message's text: a string as it is, anything else as JSON."""
    return output if isinstance(output, str) else orjson.dumps(output).decode()


def thread_turn(input: Mapping[str, Any], run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A run's messages as ``GET /v1/threads/{id}`` shows them (``run`` is the run's JSON): each
    names its run; the run's last message also carries its ``status`` and whole ``output``."""
    run_id = run["run_id"]
    turn = [{**m, "run_id": run_id} for m in input["messages"]]
    produced = [m.model_dump() | {"run_id": run_id} for m in output_messages(run["output"])]
    produced[-1] |= {"status": run["status"], "output": run["output"]}
    return turn + produced
