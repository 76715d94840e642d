"""The front: one small ASGI app that runs the lifespan (opens the stores, binds them to
the APIs) and hands each request, by path alone, to the one app that serves it:

    /data_writing, /data_writing/{key}   the publisher API (plain ASGI, CORS of its own)
    /calls, /calls/...                   the routing API (plain ASGI)
    /healthz                             answered here, in every process
    anything else                        the admin side (Starlette), or in a routing
                                         process a JSON 404

A `routing` front serves the routing API and /healthz only, and opens no Postgres: run
apart from the web processes, a flood of postbacks cannot starve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
from collections.abc import AsyncIterator, Sequence

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from calltags import (
    admin,
    adminapp,
    callerapi,
    callerpage,
    callpage,
    console,
    health,
    listings,
    logpage,
    openapi,
    postbacks,
    routing,
    schemaapi,
    schemapage,
    webhookapi,
    webhookpage,
)
from calltags.asgi import send_json
from calltags.config import Settings
from calltags.errors import ApiError, StoreUnavailable
from calltags.http import error_answer
from calltags.metrics import UNMATCHED, Metrics
from calltags.operations import Api, Operation
from calltags.services import Core, Services, open_core, open_services

log = logging.getLogger("calltags")

_TOUCH_INTERVAL = 5.0  # s between writes of keys' last_used_at
GC_YOUNG_OBJECTS = 50_000  # containers made between two collections of the youngest ones
_BACKLOG_INTERVAL = 0.25  # s between measures of the postback log backlog (back-pressure)
_PUBLISHER_PREFIX = postbacks.PATH
_ROUTING_PREFIX = "/calls"

# The route table: every operation of every API.
OPERATIONS: tuple[Operation, ...] = tuple(
    op
    for routes in (
        postbacks.ROUTES,
        routing.ROUTES,
        health.FRONT,
        admin.ROUTES,
        schemaapi.ROUTES,
        callerapi.ROUTES,
        listings.ROUTES,
        webhookapi.ROUTES,
        console.ROUTES,
        logpage.ROUTES,
        callpage.ROUTES,
        webhookpage.ROUTES,
        callerpage.ROUTES,
        schemapage.ROUTES,
        health.ROUTES,
        adminapp.ROUTES,
    )
    for op in routes.operations
)


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it (/calls, /calls/x; not /callsx)."""
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


class Role(enum.Enum):
    WEB = "web"  # every API
    ROUTING = "routing"  # the routing API and /healthz


async def _touch_keys(svc: Services) -> None:
    """Write last_used_at of the keys that served postbacks, every few seconds."""
    while True:
        await asyncio.sleep(_TOUCH_INTERVAL)
        used = svc.resolver.take_used()
        try:
            await svc.publishers.touch(used)
        except StoreUnavailable as exc:  # the next round retries with newer times
            log.warning("could not record last_used_at: %s", exc)


class Front:
    def __init__(self, settings: Settings, role: Role = Role.WEB):
        self.settings = settings
        self.role = role
        self.metrics = Metrics()
        self.routing = routing.RoutingApi(self.metrics)
        self.publisher: postbacks.PublisherApi | None = None
        self.admin: adminapp.AdminApp | None = None
        if role is Role.WEB:
            self.publisher = postbacks.PublisherApi(self.metrics)
            document = orjson.dumps(openapi.document(OPERATIONS))
            self.admin = adminapp.AdminApp(OPERATIONS, self.metrics, document)
        self.core: Core | None = None
        self.delivery_stats = webhookapi.DeliveryStats()
        if role is Role.WEB:
            self.metrics.registry.register(self.delivery_stats)

    @property
    def operations(self) -> Sequence[Operation]:
        """The operations this front serves."""
        if self.role is Role.WEB:
            return OPERATIONS
        return [op for op in OPERATIONS if op.api in (Api.ROUTING, Api.FRONT)]

    def _app(self, path: str) -> ASGIApp | None:
        """The app serving `path`; None: this front serves no such path."""
        if _under(path, _PUBLISHER_PREFIX):
            return self.publisher
        if _under(path, _ROUTING_PREFIX):
            return self.routing
        if path == "/healthz":
            return self._healthz
        return self.admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # no websockets
            return
        app = self._app(scope["path"])
        try:
            if app is None:
                await self._not_served(scope, send)
            else:
                await app(scope, receive, send)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"][:200])
            # The JSON 500, unless the app had begun its answer (the admin side sends its
            # own 500 first): then the server refuses a second start, and there is
            # nothing more the client can be told.
            with contextlib.suppress(Exception):
                await send_json(send, *error_answer(ApiError("internal_error")))

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET":
            status, body, headers = 200, await health.healthz(), None
        else:
            status, body, headers = error_answer(
                ApiError("method_not_allowed", "/healthz takes GET", {"Allow": "GET"})
            )
        self.metrics.request(Api.FRONT.value, "/healthz", scope["method"], status)
        await send_json(send, status, body, headers)

    async def _not_served(self, scope: Scope, send: Send) -> None:
        refused = ApiError("not_found", f"no route {scope['path'][:200]!r} in a routing process")
        status, body, headers = error_answer(refused)
        self.metrics.request(Api.FRONT.value, UNMATCHED, scope["method"], status)
        await send_json(send, status, body, headers)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The stores opened and bound to the APIs, the background tasks running."""
        tasks: list[asyncio.Task[None]] = []
        if self.role is Role.WEB:
            svc = await open_services(self.settings)
            self.core = svc
            assert self.publisher is not None and self.admin is not None
            self.publisher.bind(svc)
            self.admin.bind(svc)
            self.metrics.watch_log(svc.log)
            tasks += [
                asyncio.create_task(_touch_keys(svc)),
                asyncio.create_task(svc.log.watch(_BACKLOG_INTERVAL)),
                asyncio.create_task(self.delivery_stats.watch(svc)),
            ]
        else:
            self.core = open_core(self.settings)
        self.routing.bind(self.core)
        # A request makes and drops a few hundred small containers, none kept in a
        # cycle; with Python's default thresholds the cyclic collector ran every few
        # requests and now and then walked every object of the process (the parse
        # caches included). What exists now lives as long as the process: frozen, out
        # of every collection; young objects are collected less often. `make bench`:
        # ~15 % less CPU a request, and a shorter p99.
        gc.freeze()
        gc.set_threshold(GC_YOUNG_OBJECTS)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if isinstance(self.core, Services):
                try:
                    await self.core.publishers.touch(self.core.resolver.take_used())
                except StoreUnavailable as exc:
                    log.warning("could not record last_used_at: %s", exc)
            await self.core.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        running = self.running()
        try:
            await running.__aenter__()
        except Exception as exc:
            log.exception("could not start")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await running.__aexit__(None, None, None)
        except Exception as exc:
            log.exception("could not stop cleanly")
            await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})
