"""A 10xGraph (formerly AgentFlow) graph served by streamctl. Needs Python 3.12 and
``pip install 'streamctl[tenxgraph]'``.

    OPENAI_BASE_URL=http://localhost:11434/v1 streamctl serve --agent examples.tenxgraph_agent:graph

10xGraph's prebuilt ReactAgent: its model (any OpenAI-compatible server: Ollama's address above;
unset for OpenAI, with ``OPENAI_API_KEY``) and a tool node. Any compiled 10xGraph graph works the
same: ``--agent MODULE:ATTR`` takes it as it is. The tool reports progress with the
``StreamEmitter`` 10xGraph hands it (a ``custom`` event on the stream).
"""

from __future__ import annotations

import os

import anyio
from tenxgraph.core.state import AgentState
from tenxgraph.core.state.stream_emitter import StreamEmitter
from tenxgraph.prebuilt.agent.react import ReactAgent


async def get_weather(city: str, emit: StreamEmitter) -> str:
    """The current weather in a city."""
    emit.progress("looking it up", data={"city": city})
    await anyio.sleep(0.5)  # call your weather API here: Stop cancels the tool mid-await
    return f"Sunny, 22°C in {city}"


graph = ReactAgent[AgentState](
    model=os.environ.get("STREAMCTL_MODEL", "llama3.2"),
    provider="openai",
    base_url=os.environ.get("OPENAI_BASE_URL"),
    api_key=os.environ.get("OPENAI_API_KEY") or "none",  # a local server needs no key
    system_prompt=[{"role": "system", "content": "You are a concise weather assistant."}],
    tools=[get_weather],
).compile()  # the streamctl thread is its thread_id; its default checkpointer keeps memory
