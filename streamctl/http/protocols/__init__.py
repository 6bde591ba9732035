"""The frontends' protocols, each a view over the same runs and the same log.

Each module holds a pure translator from committed frames to its protocol's wire parts and one
``APIRouter``: ``ai_sdk`` (the Vercel AI SDK's UI message stream, ``useChat``), ``ag_ui`` (AG-UI,
``HttpAgent``), ``agentflow`` (AgentFlow's client, NDJSON). They share ``wire`` (cursors that name
a part of a frame, rendering, the response); a run's frames come from the read side
(``RunReads.run_frames``: from the first, then the live tail). ``http/app.py`` includes the
routers, which reach the supervisor and the principal through the ``http`` dependencies.
"""

from __future__ import annotations
