"""What the routers need, in one object: ``Services``, reached through FastAPI dependencies.

The routers hold no state of their own and close over nothing: every route asks for the services
of the application that received the request (``request.app.state.streamctl``). ``create_app``
puts them there; the supervisor and the metrics registry join when the lifespan has opened the
store. So the same routers can serve any application that carries a ``Services``, under any
prefix, and a request that arrives before the lifespan has run gets ``503``, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from ..auth import Authenticator
from ..errors import Unavailable
from ..settings import Settings
from ..sse import SendWatch
from ..supervisor import Supervisor
from .idempotency import KeyLocks

STATE_KEY = "streamctl"
"""The attribute of ``app.state`` holding the ``Services`` (``create_app``)."""
SCOPE_KEY = "streamctl.services"
"""The request scope's key for the ``Services``, set by ``Streamctl.router``'s own dependency:
a host application that includes the router carries nothing in its ``app.state``."""
PRINCIPAL_KEY = "streamctl.principal"
"""The request scope's key for the principal the host's ``authenticate`` returned."""


@dataclass
class Services:
    settings: Settings
    auth: Authenticator
    watch: SendWatch
    """One timer for every open stream: cuts off clients that stop reading (``send_timeout``)."""
    supervisor: Supervisor | None = None
    """Set while the lifespan runs (the store is open)."""
    metrics: CollectorRegistry | None = None
    host_auth: bool = False
    """The host's ``authenticate`` names the principal (``PRINCIPAL_KEY``), not a token."""
    agent_name: str = "the agent"
    """What the page calls the served agent (``page.agent_name``)."""
    keys: KeyLocks = field(default_factory=KeyLocks)
    """Claims of one ``Idempotency-Key`` take turns in this process (``idempotency.py``)."""


def find_services(request: Request) -> Services | None:
    found: Services | None = request.scope.get(SCOPE_KEY)
    return found if found is not None else getattr(request.app.state, STATE_KEY, None)


# Dependencies are `async def`: FastAPI runs a plain `def` in a worker thread, and under a
# firehose each such hop waited for the GIL and a loop turn (two per request: POST and stop).
async def get_services(request: Request) -> Services:
    services = find_services(request)
    if services is None:
        raise Unavailable("streamctl is not set up in this application")
    return services


async def get_supervisor(services: Annotated[Services, Depends(get_services)]) -> Supervisor:
    if services.supervisor is None:
        raise Unavailable("the server is starting: its lifespan has not opened the store yet")
    return services.supervisor


Svc = Annotated[Services, Depends(get_services)]
Sup = Annotated[Supervisor, Depends(get_supervisor)]
