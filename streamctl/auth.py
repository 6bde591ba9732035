"""Who is asking. Authentication is not built yet: every request is the principal ``anonymous``.

Every lookup in the supervisor is already scoped by this principal, so API keys or JWTs can be
added here without reshaping the data.
"""

from __future__ import annotations

ANONYMOUS = "anonymous"


async def principal() -> str:
    """FastAPI dependency: the principal that owns what this request creates and may read."""
    return ANONYMOUS
