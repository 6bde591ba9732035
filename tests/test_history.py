"""A run's output turned back into chat messages (``streamctl.history``): each model message
separate, tool calls on the message that made them, results in the order they came, calls that
never returned left out, and a history window that never begins with an orphan result."""

from __future__ import annotations

from typing import Any

from streamctl.agents.base import Message, MessageToolCall
from streamctl.agents.openai import ChatAgent
from streamctl.history import output_messages, run_messages, trim_window
from streamctl.limits import history_window
from streamctl.runs import RunOutput


def fold(*events: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The output of a run whose events (after its ``run`` event) are ``events``."""
    output = RunOutput()
    for seq, (kind, data) in enumerate(events, start=2):
        output.apply(seq, kind, data)
    return output.as_json()


def text(content: str, message_id: str) -> tuple[str, dict[str, Any]]:
    return "message_chunk", {"content": content, "message_id": message_id}


def start(call_id: str, **args: Any) -> tuple[str, dict[str, Any]]:
    return "tool_start", {"name": "look", "args": args, "call_id": call_id}


def end(call_id: str, output: Any = "found") -> tuple[str, dict[str, Any]]:
    return "tool_end", {"name": "look", "output": output, "call_id": call_id}


def assistant(content: str, *calls: str) -> Message:
    made = [MessageToolCall(id=c, name="look", args={"q": c}) for c in calls]
    return Message(role="assistant", content=content, tool_calls=made)


def result(call_id: str, content: str = "found") -> Message:
    return Message(role="tool", content=content, tool_call_id=call_id, name="look")


def test_messages_calls_and_results_in_the_order_they_came() -> None:
    output = fold(
        text("Let me ", "m1"),
        text("look.", "m1"),
        start("a", q="a"),
        start("b", q="b"),  # two calls of one model message (parallel tool calls)
        end("b", {"hits": 2}),  # the second returned first
        end("a"),
        text("Found.", "m2"),
    )
    assert output_messages(output) == [
        assistant("Let me look.", "a", "b"),
        result("b", '{"hits":2}'),  # anything but a string is sent as JSON
        result("a"),
        Message(role="assistant", content="Found."),
    ]


def test_calls_before_any_text_and_calls_after_a_result() -> None:
    output = fold(start("a", q="a"), end("a"), start("b", q="b"), end("b"), text("Done.", "m1"))
    assert output_messages(output) == [
        assistant("", "a"),
        result("a"),
        assistant("", "b"),  # made once a's result was back: a turn of its own
        result("b"),
        Message(role="assistant", content="Done."),
    ]


def test_a_stopped_run_keeps_its_partial_text_without_the_call_that_never_returned() -> None:
    output = fold(text("Let me ", "m1"), start("a", q="a"), end("a", None), start("b", q="b"))
    assert output_messages(output) == [assistant("Let me ", "a"), result("a", "null")]
    assert output_messages(fold(start("b", q="b"))) == [Message(role="assistant", content="")]
    assert output_messages(None) == [Message(role="assistant", content="")]


def test_outputs_stored_before_end_seq_existed() -> None:
    call = {"call_id": "a", "name": "look", "args": {"q": "a"}, "output": "found", "seq": 3}
    unanswered: dict[str, Any] = {
        "call_id": "b",
        "name": "look",
        "args": {},
        "output": None,
        "seq": 4,
    }
    old = {
        "text": "Hi",
        "messages": [{"message_id": "m1", "role": "assistant", "content": "Hi", "seq": 2}],
        "tool_calls": [call, unanswered],
    }
    inputs = {"messages": [{"role": "user", "content": "hello"}]}
    assert run_messages(inputs, old) == [
        Message(role="user", content="hello"),
        assistant("Hi", "a"),
        result("a"),
    ]


def test_the_history_window_never_begins_with_a_result_whose_call_it_cut() -> None:
    history = [
        Message(role="user", content="q"),
        assistant("", "a", "b"),
        result("a"),
        result("b"),
        Message(role="assistant", content="Done."),
    ]
    assert trim_window(history_window(history, 3, 10_000)) == history[-1:]
    assert trim_window(history_window(history, 4, 10_000)) == history[1:]
    # The calls' arguments count against the byte cap too.
    assert history_window(history, 10, history[1].size) == history[2:]


def test_plain_messages_keep_their_json_shape() -> None:
    assert Message(role="user", content="hi").model_dump() == {"role": "user", "content": "hi"}
    assert result("a").model_dump() == {
        "role": "tool",
        "content": "found",
        "tool_call_id": "a",
        "name": "look",
    }


def test_openai_leaves_out_what_the_api_would_refuse() -> None:
    agent = ChatAgent("m", client=object())  # type: ignore[arg-type]  # never called
    sent = agent._messages(
        [
            Message(role="tool", content="a result naming no call"),
            Message(role="assistant", content=""),
            Message(role="user", content="hi"),
        ]
    )
    assert sent == [{"role": "user", "content": "hi"}]
