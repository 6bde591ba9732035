"""The HTTP API (docs/api.md): the only package that knows HTTP status codes.

app.py         create_app: lifespan (store, supervisor), middleware, the routers
runs.py        /v1/runs…, /v1/graph/stream, /stop
threads.py     /v1/threads/{thread_id}…
system.py      /healthz, /readyz, /metrics, /v1/schema/events
page.py        /, /static/…
services.py    Services: what the routes need, found through app.state
auth.py        the authenticate dependencies (bearer, POST body, stream tokens)
errors.py      domain error → status and JSON error body
models.py      the response bodies, for response_model and /openapi.json
streams.py     SSE answers: a stream slot per principal, then EventStream
body_limit.py  BodyLimit, the request body's size limit (ASGI middleware)
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
