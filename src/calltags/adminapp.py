"""The admin side: a Starlette app serving the admin API, the console, readiness,
metrics and the OpenAPI document, every route made from an operation of the table.
One endpoint per JSON operation authorizes, reads the body or query into its model,
calls the handler and answers its model; every error, 404, 405 and bug included, is
`http.error_answer`'s JSON. The console's pages are served by `pages.endpoint`, which
answers its errors as pages (a bug is the same JSON 500)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from calltags import pages, session
from calltags.errors import RETRY_AFTER_SECONDS, ApiError, StoreUnavailable
from calltags.http import JSONResponse, check_bearer, error_response, query_values, read_body
from calltags.metrics import UNMATCHED, Metrics
from calltags.models import convert, decode, encode
from calltags.operations import Api, Auth, Operation, Routes
from calltags.services import Services, services

log = logging.getLogger("calltags")

Endpoint = Callable[[Request], Awaitable[Response]]
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _authorize(auth: Auth, request: Request, svc: Services) -> None:
    header = request.headers.get("authorization")
    if auth is Auth.ADMIN:
        if session.from_console(request, svc):  # a console page, with the session's token
            return
        if header is None and session.SESSION_COOKIE in request.cookies:
            raise ApiError(
                "unauthorized",
                f"a valid Bearer token is required (a console page sends {session.CSRF_HEADER}"
                " with its session)",
            )
        check_bearer(header, (svc.admin_token(),))
    elif auth is Auth.ROUTING:
        check_bearer(header, svc.routing_tokens)


def json_endpoint(op: Operation) -> Endpoint:
    """The endpoint of a JSON operation: its handler takes (services, request) and the
    body or query model the operation names, and returns the answer's model (or the
    status and the model, for another status than the operation's)."""

    async def endpoint(request: Request) -> Response:
        svc = services(request)
        _authorize(op.auth, request, svc)
        given: dict[str, Any] = {}
        if op.body is not None:
            given["body"] = decode(await read_body(request), op.body)
        if op.query is not None:
            given["query"] = convert(query_values(request), op.query)
        answer = await op.handler(svc, request, **given)
        status = op.status
        if isinstance(answer, tuple):  # another status than the operation's usual one
            status, answer = answer
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        return JSONResponse(encode(answer), status_code=status, headers=headers)

    return endpoint


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable: %s", exc)
    return error_response(ApiError("unavailable"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:  # Starlette raises no other; a bug if it did
        return await _bug(request, exc)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(ApiError(code, f"{exc.detail}: {request.url.path[:200]}", headers))


async def _bug(request: Request, exc: Exception) -> Response:
    # Logged by the front, which the exception reaches next (Starlette raises it on).
    return error_response(ApiError("internal_error"))


ROUTES = Routes(Api.ADMIN)


@ROUTES.route("GET", "/openapi.json", media="application/json")
async def openapi_json(request: Request) -> Response:
    """This document."""
    document: bytes = request.app.state.openapi
    return JSONResponse(document)


@ROUTES.route("GET", "/metrics", media=CONTENT_TYPE_LATEST)
async def metrics_text(request: Request) -> Response:
    """Prometheus metrics of this process."""
    found: Metrics = request.app.state.metrics
    return Response(found.render(), media_type=CONTENT_TYPE_LATEST)


class AdminApp:
    """The admin side's ASGI app, counting each answer by route and status."""

    def __init__(self, operations: Sequence[Operation], metrics: Metrics, openapi: bytes):
        self.metrics = metrics
        by_path: dict[str, dict[str, Endpoint]] = {}
        for op in operations:
            if op.api is not Api.ADMIN:
                continue
            if op.auth is Auth.SESSION:
                endpoint = pages.endpoint(op)
            else:
                endpoint = op.handler if op.endpoint else json_endpoint(op)
            by_path.setdefault(op.path, {})[op.method] = endpoint
        # One route a path, so that a method it does not take is a 405 naming them all.
        routes = [
            Route(path, _by_method(methods), methods=list(methods))
            for path, methods in by_path.items()
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={
                ApiError: _api_error,
                StoreUnavailable: _store_unavailable,
                HTTPException: _http_error,
                Exception: _bug,
            },
        )
        self.app.state.metrics = metrics
        self.app.state.openapi = openapi

    def bind(self, services: Services) -> None:
        self.app.state.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", UNMATCHED)
            self.metrics.request(Api.ADMIN.value, path, scope["method"], status)
