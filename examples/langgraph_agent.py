"""A LangGraph graph served by streamctl. Needs ``pip install 'streamctl[langgraph]'``.

    streamctl serve --agent examples.langgraph_agent:graph

Any compiled graph whose state has ``messages`` works the same. This one needs no model server:
its "model" is LangChain's fake chat model, streaming a canned answer token by token; put your
real chat model there (``ChatOpenAI``, ``ChatAnthropic``, ...). It shows a tool-like step that
reports progress with ``get_stream_writer()`` (a ``custom`` event on the stream).
"""

from __future__ import annotations

from itertools import cycle
from typing import Any

import anyio
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph

model = GenericFakeChatModel(messages=cycle([AIMessage("Here is what I found, in a few words.")]))


async def research(state: MessagesState) -> dict[str, Any]:
    writer = get_stream_writer()
    for step in ("searching", "reading", "summarising"):
        writer({"name": "progress", "data": {"step": step}})
        await anyio.sleep(0.3)  # Stop cancels the graph here too
    return {}


async def answer(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await model.ainvoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("research", research)
builder.add_node("answer", answer)
builder.add_edge(START, "research")
builder.add_edge("research", "answer")
graph = builder.compile(checkpointer=InMemorySaver())  # the streamctl thread is its thread_id
