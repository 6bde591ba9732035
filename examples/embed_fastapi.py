"""A host application with its own routes and its own login, and streamctl inside it under
``/agent`` (docs/embedding.md). Run it with plain uvicorn:

    uvicorn examples.embed_fastapi:app --port 8000

    curl -c jar -X POST localhost:8000/login -d '{"user": "alice", "password": "wonderland"}' \
        -H 'Content-Type: application/json'
    curl -b jar -N -X POST localhost:8000/chat -H 'Content-Type: application/json' \
        -d '{"message": "Weather in Tokyo?"}'
    # the page: http://localhost:8000/agent/ (log in first; the cookie reaches it)

Environment: ``APP_DB`` (default ``app.db``); every ``STREAMCTL_*`` setting applies too.
"""

from __future__ import annotations

import os
import secrets
from typing import Annotated, Any

from fastapi import Cookie, Depends, FastAPI, Header, HTTPException, Response
from pydantic import BaseModel

import streamctl

# -- the host's own login: users, and sessions in a cookie ----------------------------------------

USERS = {"alice": "wonderland", "bob": "builder"}
SESSIONS: dict[str, str] = {}


class Login(BaseModel):
    user: str
    password: str


async def current_user(session: Annotated[str | None, Cookie()] = None) -> str:
    """The host's dependency: who is asking. streamctl takes it as its ``authenticate``."""
    user = SESSIONS.get(session or "")
    if user is None:
        raise HTTPException(401, "log in first: POST /login")
    return user


User = Annotated[str, Depends(current_user)]

# -- streamctl, in ten lines -----------------------------------------------------------------------

sc = streamctl.Streamctl(
    agent=os.environ.get("APP_AGENT", "demo"),
    db=os.environ.get("APP_DB", "app.db"),
    authenticate=current_user,
)
app = FastAPI(title="host", lifespan=sc.lifespan)
app.include_router(sc.router, prefix="/agent")
# For the host's own routes below, which call sc.start / sc.stop: streamctl's errors as JSON.
app.add_exception_handler(streamctl.StreamctlError, streamctl.http.error_handler)

# -- the host's own routes -------------------------------------------------------------------------


@app.post("/login")
async def login(body: Login, response: Response) -> dict[str, str]:
    if not secrets.compare_digest(USERS.get(body.user, ""), body.password):
        raise HTTPException(401, "wrong user or password")
    session = secrets.token_urlsafe(24)
    SESSIONS[session] = body.user
    response.set_cookie("session", session, httponly=True, samesite="lax")
    return {"user": body.user}


@app.get("/me")
async def me(user: User) -> dict[str, str]:
    return {"user": user}


# The AgentFlow guide's "custom FastAPI integration", with streamctl underneath: the stream is
# resumable (Last-Event-ID), stoppable, and survives the client's disconnect.


class Chat(BaseModel):
    message: str
    thread_id: str | None = None
    config: dict[str, Any] = {}


@app.post("/chat")
async def chat(body: Chat, user: User) -> Response:
    run = await sc.start(body.message, thread_id=body.thread_id, owner=user, config=body.config)
    return sc.stream_response(run["run_id"], owner=user)


@app.get("/chat/{run_id}")
async def resume(
    run_id: str, user: User, last_event_id: Annotated[str | None, Header()] = None
) -> Response:
    return sc.stream_response(run_id, after=last_event_id, owner=user)


@app.post("/chat/{run_id}/stop")
async def stop(run_id: str, user: User) -> dict[str, Any]:
    return await sc.stop(run_id, owner=user)
