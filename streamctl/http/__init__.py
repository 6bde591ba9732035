"""The HTTP API (docs/api.md): the only package that knows HTTP status codes.

embedding.py   Streamctl: lifespan, router, programmatic control, for any FastAPI app
app.py         create_app: a Streamctl, plus middleware and the application's error handlers
runs.py        /v1/runs…, /stop
threads.py     /v1/threads/{thread_id}…
system.py      /healthz, /readyz, /metrics, /v1/schema/events
page.py        /, /static/…
services.py    Services: what the routes need, found in the request's scope or app.state
auth.py        the authenticate dependencies (bearer, POST body, stream tokens)
errors.py      domain error → status and JSON error body
models.py      the response bodies, for response_model and /openapi.json
streams.py     SSE answers: a stream slot per principal, then EventStream
body_limit.py  BodyLimit, the request body's size limit (ASGI middleware)
protocols/     the frontends' protocols: AI SDK, AG-UI, AgentFlow (/v1/ai-sdk, /v1/ag-ui, /v1/graph)
"""

from __future__ import annotations

from .app import create_app
from .body_limit import BodyLimit
from .embedding import Streamctl
from .errors import error_answer as error_handler

__all__ = ["BodyLimit", "Streamctl", "create_app", "error_handler"]
"""``error_handler``: for a host's own routes that call ``Streamctl``'s methods,
``app.add_exception_handler(streamctl.StreamctlError, error_handler)`` answers streamctl's errors
(``RunNotFound``, ``TooManyRuns``...) in streamctl's JSON shape and status."""
