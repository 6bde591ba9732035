"""An OpenAI-compatible chat model with a Python tool. Needs ``pip install 'streamctl[openai]'``.

    OPENAI_BASE_URL=http://localhost:11434/v1 streamctl serve --agent examples.openai_agent:agent

(Ollama's address; leave ``OPENAI_BASE_URL`` unset for OpenAI and set ``OPENAI_API_KEY``.) With
no tools, ``streamctl serve --agent openai --model NAME`` does the same without any file.
"""

from __future__ import annotations

import os

from streamctl.agents.openai import ChatAgent


async def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny, 22°C in {city}"  # call your weather API here (Stop cancels the await)


agent = ChatAgent(
    model=os.environ.get("STREAMCTL_MODEL", "llama3.2"),
    tools=[get_weather],
    system="You are a concise weather assistant. Use get_weather for current conditions.",
)
