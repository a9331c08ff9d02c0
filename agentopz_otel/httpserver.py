"""HTTP listeners with bounded connections, for the OTLP/HTTP receiver and the admin port.

aiohttp has no header or body read timeout and no connection cap, so a sender trickling a byte a
second, a lying Content-Length or a chunked body that never ends would hold a connection (and a file
descriptor) for ever. Each connection here is in one phase with a deadline: reading headers, reading
the body, handling, or idle between keep-alive requests; a sweeper closes the ones past their
deadline and counts them. Connections over `max_connections` are answered 503 + Retry-After and
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .metrics import Registry
from .netaddr import Endpoint, parse_endpoint


class HttpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint
    max_connections: int = Field(default=1000, ge=1, description="open connections; past it: 503 and close")
    read_header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="from the connection (or the first byte of a request) to its last header"
    )
    read_body_timeout_seconds: float = Field(default=30.0, gt=0, description="from the headers to the body's end")
    idle_timeout_seconds: float = Field(default=60.0, gt=0, description="keep-alive time between requests")


class Phase(enum.Enum):
    HEADERS = "read_header_timeout"
    BODY = "read_body_timeout"
    HANDLING = "handling"
    IDLE = "idle_timeout"


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler, reporting its phases to a ConnectionGuard."""

    def __init__(self, guard: ConnectionGuard, manager: web.Server, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.phase = Phase.HEADERS
        self.deadline = math.inf
        self.over_limit = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:
            self.guard.enter(self, Phase.HEADERS)
        super().data_received(data)


class ConnectionGuard:
    """Connection count, phase deadlines and the sweeper for one listener (`server` in metrics)."""

    def __init__(
        self,
        server: str,
        config: HttpServerConfig,
        metrics: Registry,
        retry_after_seconds: float,
    ) -> None:
        """Routes read their own bodies; one that calls `body_read` when done ends the body deadline
        there, for any other the deadline covers the whole request."""
        self.server = server
        self.config = config
        self._retry_after = str(math.ceil(retry_after_seconds))
        self._open: set[GuardedHandler] = set()
        self._timeouts = {
            Phase.HEADERS: config.read_header_timeout_seconds,
            Phase.BODY: config.read_body_timeout_seconds,
            Phase.HANDLING: math.inf,
            Phase.IDLE: config.idle_timeout_seconds,
        }
        self._closed = metrics.metric("agentopz_http_connections_closed_total")
        self._connections = metrics.metric("agentopz_http_connections").series((server,))
        self._sweeper: asyncio.Task | None = None

    def opened(self, handler: GuardedHandler) -> None:
        self._open.add(handler)
        handler.over_limit = len(self._open) > self.config.max_connections
        self._connections.value = len(self._open)
        self.enter(handler, Phase.HEADERS)

    def closed(self, handler: GuardedHandler) -> None:
        self._open.discard(handler)
        self._connections.value = len(self._open)

    def enter(self, handler: GuardedHandler, phase: Phase) -> None:
        handler.phase = phase
        handler.deadline = asyncio.get_running_loop().time() + self._timeouts[phase]

    def body_read(self, request: web.Request) -> None:
        """The request's body is read: its handling is not a read and has no deadline."""
        if isinstance(request.protocol, GuardedHandler):
            self.enter(request.protocol, Phase.HANDLING)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        protocol = request.protocol
        assert isinstance(protocol, GuardedHandler)
        if protocol.over_limit:
            self._closed.series((self.server, "connection_limit")).value += 1
            response = web.Response(
                status=503, text="too many connections\n", headers={"Retry-After": self._retry_after}
            )
            response.force_close()
            return response
        self.enter(protocol, Phase.BODY)
        try:
            return await handler(request)
        except ConnectionResetError:
            # The sender went away or was cut off by a deadline: nobody is left to answer, nothing to log.
            return web.Response(status=408)
        finally:
            self.enter(protocol, Phase.IDLE)

    async def _sweep(self) -> None:
        period = min(0.5, min(self._timeouts.values()) / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for handler in [h for h in self._open if h.deadline < now]:
                self._closed.series((self.server, handler.phase.value)).value += 1
                self._open.discard(handler)
                handler.force_close()
            self._connections.value = len(self._open)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are GuardedHandlers."""

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, **handler_options) -> None:
        super().__init__(runner)
        self._guard = guard
        self._host, self._port = parse_endpoint(guard.config.endpoint)
        config = guard.config
        # aiohttp's own keep-alive close never comes before the guard's deadlines.
        self._handler_options = {
            "keepalive_timeout": config.idle_timeout_seconds + config.read_header_timeout_seconds,
            "access_log": None,
            **handler_options,
        }

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None

        def handler() -> GuardedHandler:
            return GuardedHandler(self._guard, manager, loop=loop, **self._handler_options)

        self._server = await loop.create_server(handler, self._host, self._port, reuse_address=True)
        self._guard.start()

    async def stop(self) -> None:
        await self._guard.stop()
        await super().stop()


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to exceed `limit` bytes, whether the sender
    declared a Content-Length or streams it chunked (only `limit` + one chunk is ever held)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def serve(
    app: web.Application, guard: ConnectionGuard, what: str, **handler_options
) -> tuple[web.AppRunner, GuardedSite]:
    """Start `app` on the guard's endpoint; a busy or bad port is an OSError: "`what` on <endpoint>: <reason>"."""
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None, **handler_options)
    await runner.setup()
    site = GuardedSite(runner, guard, **handler_options)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(f"{what} on {guard.config.endpoint}: {error.strerror}") from None
    return runner, site
