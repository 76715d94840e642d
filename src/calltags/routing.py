"""The routing API: POST /calls (connect), GET /calls/{call_uuid}, POST
/calls/{call_uuid}/end — a plain ASGI app (Bearer CALLTAGS_ROUTING_TOKEN or
CALLTAGS_ADMIN_TOKEN). It needs Redis only, so a routing process serves through a
Postgres outage, and apart from the publisher API it cannot be starved by a flood of
postbacks (see the Procfile's `routing:`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from calltags import phone
from calltags.asgi import Incoming, send_json
from calltags.errors import ApiError, StoreUnavailable, call_not_found
from calltags.http import Answer, check_bearer, error_answer
from calltags.ids import random_uuid
from calltags.metrics import UNMATCHED, Metrics
from calltags.models import Call, ConnectRequest, call_model, decode, encode
from calltags.operations import Api, Auth, Operation, Routes
from calltags.services import Core
from calltags.store import CallNotFound

log = logging.getLogger("calltags")

Handler = Callable[[Core, Incoming, dict[str, str]], Awaitable[tuple[int, Call]]]
_CALLER_FIELD = "at `$.caller_number`"
ROUTES = Routes(Api.ROUTING, Auth.ROUTING)
_API = Api.ROUTING.value  # the metrics' label
_CALL = ("call_not_found",)


@ROUTES.route(
    "POST", "/calls", body=ConnectRequest, status=201, also={200: Call},
    errors=("missing_caller", "invalid_caller_number", "call_exists", "invalid_body"),
    doc={"description": "201 with the new live call, or 200 with the call that call_uuid"
         " names when it is the same caller's already."},
)  # fmt: skip
async def connect(core: Core, req: Incoming, params: dict[str, str]) -> tuple[int, Call]:
    """Connect a call, claiming the caller's pending tags."""
    try:
        body = decode(await req.body(), ConnectRequest)
    except ApiError as exc:
        if exc.message.endswith(_CALLER_FIELD):  # not text nor a number: no phone number
            raise ApiError("invalid_caller_number", "caller_number must be text") from exc
        raise
    raw = body.caller_number
    if raw is None or raw == "":
        raise ApiError("missing_caller", "caller_number is required")
    caller = phone.normalize(str(raw), core.settings.default_region)
    call_uuid = body.call_uuid
    if call_uuid is None:
        call_uuid = random_uuid()
    else:
        owner = await core.store.caller_of(call_uuid)
        if owner is not None and owner != caller:
            raise ApiError("call_exists", f"call_uuid {call_uuid!r} belongs to another caller")
    publisher_id = body.publisher_id
    call, created = await core.store.connect(
        caller,
        call_uuid,
        publisher_id=str(publisher_id) if publisher_id not in (None, "") else None,
        campaign=body.campaign or None,
    )
    return 201 if created else 200, call_model(call)


@ROUTES.route("GET", "/calls/{call_uuid}", errors=_CALL)
async def get_call(core: Core, req: Incoming, params: dict[str, str]) -> tuple[int, Call]:
    """Read a call and its tags."""
    call_uuid = params["call_uuid"]
    try:
        return 200, call_model(await core.store.get_call(call_uuid))
    except CallNotFound as exc:
        raise call_not_found(call_uuid) from exc


@ROUTES.route("POST", "/calls/{call_uuid}/end", errors=_CALL)
async def end_call(core: Core, req: Incoming, params: dict[str, str]) -> tuple[int, Call]:
    """Complete a call; each key's end-call cut-off starts now."""
    call_uuid = params["call_uuid"]
    try:
        call, _ = await core.store.end_call(call_uuid)
    except CallNotFound as exc:
        raise call_not_found(call_uuid) from exc
    return 200, call_model(call)


class _Route:
    def __init__(self, operation: Operation, metrics: Metrics):
        self.operation = operation
        self.handler: Handler = operation.handler
        self.pattern: re.Pattern[str] = compile_path(operation.path)[0]
        self.latency = metrics.connect_latency if operation.handler is connect else None


class RoutingApi:
    """The ASGI app of the routing API: every request answered by `answer`."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.core: Core | None = None
        self._routes = [_Route(op, metrics) for op in ROUTES.operations]
        self._static = {(r.operation.method, r.operation.path): r for r in self._routes}

    def bind(self, core: Core) -> None:
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Incoming(scope, receive)
        route, params = self._match(req)
        status, body, headers = await self.answer(req, route, params)
        if route is None:
            self.metrics.request(_API, UNMATCHED, req.method, status)
        else:
            if route.latency is not None:
                route.latency.observe(req.seconds())
            self.metrics.request(_API, route.operation.path, req.method, status)
        await send_json(send, status, body, headers)

    def _match(self, req: Incoming) -> tuple[_Route | None, dict[str, str]]:
        found = self._static.get((req.method, req.path))
        if found is not None:
            return found, {}
        for route in self._routes:
            match = route.pattern.match(req.path)
            if match is not None and route.operation.method == req.method:
                return route, match.groupdict()
        return None, {}

    def _unmatched(self, req: Incoming) -> ApiError:
        allowed = [r.operation.method for r in self._routes if r.pattern.match(req.path)]
        if not allowed:
            return ApiError("not_found", f"no route {req.path[:200]!r}")
        return ApiError(
            "method_not_allowed",
            f"{req.path[:200]} takes {', '.join(allowed)}",
            {"Allow": ", ".join(allowed)},
        )

    async def answer(self, req: Incoming, route: _Route | None, params: dict[str, str]) -> Answer:
        """What the client gets, errors and bugs included."""
        core = self.core
        assert core is not None, "the routing API answers once the front has started"
        try:
            if route is None:
                raise self._unmatched(req)
            check_bearer(req.header(b"authorization"), core.routing_tokens)
            status, call = await route.handler(core, req, params)
            return status, encode(call), None
        except ApiError as exc:
            return error_answer(exc)
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            return error_answer(ApiError("unavailable"))
        except Exception:
            log.exception("%s %s failed", req.method, req.path[:200])
            return error_answer(ApiError("internal_error"))
