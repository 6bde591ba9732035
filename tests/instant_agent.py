"""An agent for servers started as child processes (``--agent tests.instant_agent:Instant``):
a ``ScriptedAgent`` that answers at once, with one tool call, so every stream ends by itself."""

from __future__ import annotations

from streamctl.agents import ScriptedAgent
from streamctl.events import MessageChunk, ToolEnd, ToolStart


class Instant(ScriptedAgent):
    def __init__(self) -> None:
        super().__init__(
            [
                MessageChunk(content="Looking it up. ", message_id="m1"),
                ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id="c1"),
                ToolEnd(name="get_weather", output="Sunny, 22°C", call_id="c1"),
                MessageChunk(content="Sunny.", message_id="m2"),
            ]
        )
