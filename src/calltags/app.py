"""The ASGI application: routes, error handling, and the clients opened in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from calltags import admin, calls, health, listings, logpage, metrics, openapi, postbacks
from calltags.asgi import Endpoint
from calltags.clients import redis_client
from calltags.config import Settings, load_settings, require
from calltags.db import create_pool
from calltags.errors import ApiError, StoreUnavailable
from calltags.http import error_response
from calltags.keys import KeySpace
from calltags.log import PostbackLog
from calltags.publishers import GuessGuard, KeyResolver, Publishers
from calltags.services import Services
from calltags.store import open_store

log = logging.getLogger("calltags")

_TOUCH_INTERVAL = 5.0  # s between writes of keys' last_used_at
GC_YOUNG_OBJECTS = 50_000  # containers made between two collections of the youngest ones
_BACKLOG_INTERVAL = 0.25  # s between measures of the postback log backlog (back-pressure)


async def _touch_keys(svc: Services) -> None:
    """Write last_used_at of the keys that served postbacks, every few seconds."""
    while True:
        await asyncio.sleep(_TOUCH_INTERVAL)
        used = svc.resolver.take_used()
        try:
            await svc.publishers.touch(used)
        except Exception:  # the next round retries with newer times; keep the loop alive
            log.exception("could not record last_used_at")


async def open_services(settings: Settings) -> Services:
    keys = KeySpace(settings.redis_prefix, settings.log_shards)
    redis = redis_client(settings)
    pool = await create_pool(require(settings.database_url, "DATABASE_URL"))
    publishers = Publishers(pool, redis, keys)
    return Services(
        settings=settings,
        redis=redis,
        pool=pool,
        keys=keys,
        store=open_store(redis, keys, settings.call_ttl_seconds),
        log=PostbackLog(redis, keys, settings.log_max_backlog),
        publishers=publishers,
        resolver=KeyResolver(redis, keys, settings.key_cache_seconds, fallback=publishers),
        guard=GuessGuard(settings.key_failures_per_minute),
    )


async def close_services(svc: Services) -> None:
    await svc.pool.close()
    await svc.redis.aclose()


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable: %s", exc)
    return error_response(ApiError(503, "unavailable", "a store is unavailable, retry shortly"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(ApiError(exc.status_code, code, str(exc.detail), headers))


def _data_writing_app() -> CORSMiddleware:
    """The publisher endpoint, open to browsers of any origin (lead forms post to it)."""
    return CORSMiddleware(
        postbacks.data_writing,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        max_age=86400,
    )


class App(Starlette):
    """Starlette, with a short way in for the busiest requests: a GET or POST to
    /data_writing without an Origin header (a server's postback, not a browser's), and
    POST /calls (a connect), go straight to their handlers (see asgi.py). Every other
    request, postbacks with Origin included (CORSMiddleware adds their CORS headers),
    goes through the router and middleware; the routes name the same handlers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            path = scope["path"]
            if method == "POST" and path == "/calls":
                scope["app"] = self
                await calls.connect(scope, receive, send)
                return
            if (
                (method == "GET" or method == "POST")
                and postbacks.path_key(path) is not None
                and not any(name == b"origin" for name, _ in scope["headers"])
            ):
                scope["app"] = self
                await postbacks.data_writing(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings if settings is not None else load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        svc = await open_services(settings)
        app.state.services = svc
        # A request makes and drops a few hundred small containers, none kept in a
        # cycle; with Python's default thresholds the cyclic collector ran every few
        # requests and now and then walked every object of the process (the parse
        # caches included). What exists now lives as long as the process: frozen, out
        # of every collection; young objects are collected less often. `make bench`:
        # ~15 % less CPU a request, and a shorter p99.
        gc.freeze()
        gc.set_threshold(GC_YOUNG_OBJECTS)
        app.state.metrics = metrics.registry(svc.log)
        toucher = asyncio.create_task(_touch_keys(svc))
        watcher = asyncio.create_task(svc.log.watch(_BACKLOG_INTERVAL))
        try:
            yield
        finally:
            for task in (toucher, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.publishers.touch(svc.resolver.take_used())
            await close_services(svc)

    data_writing = _data_writing_app()
    routes = [
        Route("/data_writing", data_writing, methods=["GET", "POST", "OPTIONS"]),
        Route("/data_writing/{key}", data_writing, methods=["GET", "POST", "OPTIONS"]),
        Route("/calls", Endpoint(calls.connect), methods=["POST"]),
        Route("/calls/{call_uuid}", calls.get_call, methods=["GET"]),
        Route("/calls/{call_uuid}/end", calls.end_call, methods=["POST"]),
        Route("/admin/publishers", admin.create_publisher, methods=["POST"]),
        Route("/admin/publishers", admin.list_publishers, methods=["GET"]),
        Route("/admin/publishers/{publisher_id}/keys", admin.create_key, methods=["POST"]),
        Route("/admin/publishers/{publisher_id}/keys", admin.list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", admin.update_key, methods=["PATCH"]),
        Route("/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/admin/keys/{key_id}/rotate", admin.rotate_key, methods=["POST"]),
        Route("/admin/postbacks", listings.list_postbacks, methods=["GET"]),
        Route("/admin/calls", listings.list_calls, methods=["GET"]),
        Route("/admin/log", logpage.log_page, methods=["GET"]),
        Route("/admin/login", logpage.login_form, methods=["GET"]),
        Route("/admin/login", logpage.login, methods=["POST"]),
        Route("/admin/logout", logpage.logout, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint, methods=["GET"]),
    ]
    return App(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            StoreUnavailable: _store_unavailable,
            HTTPException: _http_error,
        },
    )
