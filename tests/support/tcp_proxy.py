"""A TCP forwarder for tests: put it between a client (httpx, Chromium) and a real server, then
cut every open connection (the peer sees the body end early, as when a proxy or a deploy drops
it) or freeze them (nothing flows and nothing closes: a half-open connection)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup


@dataclass(eq=False)
class Connection:
    note: object
    """What ``on_accept`` returned when this connection was accepted."""
    sent: bytearray = field(default_factory=bytearray)
    """Every byte the client sent on it (the request heads, for tests to read)."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    frozen: bool = False


class Proxy:
    """``async with Proxy(server_port) as proxy``; talk to ``proxy.url`` instead of the server."""

    def __init__(self, port: int, on_accept: Callable[[], object] = lambda: None) -> None:
        self.upstream = port
        self.on_accept = on_accept
        self.connections: list[Connection] = []
        self.open: set[Connection] = set()
        self.url = ""
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> Proxy:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()

        async def serve() -> None:
            async with listener:
                await listener.serve(self._handle)

        self._tg.start_soon(serve)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        # Exited cleanly whatever the body raised, so its exception propagates unwrapped.
        await self._tg.__aexit__(None, None, None)

    def cut(self) -> int:
        """Close every connection open now (new ones are forwarded again); how many were cut."""
        cut = list(self.open)
        for conn in cut:
            conn.scope.cancel()
        return len(cut)

    def freeze(self) -> int:
        """Stop forwarding on every connection open now, without closing them."""
        for conn in self.open:
            conn.frozen = True
        return len(self.open)

    async def _handle(self, client: ByteStream) -> None:
        conn = Connection(self.on_accept())
        self.connections.append(conn)
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.upstream)
            except OSError:
                return
            async with upstream:
                with conn.scope:
                    self.open.add(conn)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, client, upstream, conn, True)
                            tg.start_soon(self._pump, upstream, client, conn, False)
                    finally:
                        self.open.discard(conn)

    @staticmethod
    async def _pump(source: ByteStream, sink: ByteStream, conn: Connection, record: bool) -> None:
        try:
            async for data in source:
                if record:
                    conn.sent += data
                if conn.frozen:
                    await anyio.sleep_forever()
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        conn.scope.cancel()  # one side is gone: close the other
