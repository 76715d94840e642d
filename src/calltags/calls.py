"""The routing API: POST /calls, GET /calls/{call_uuid}, POST /calls/{call_uuid}/end."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from calltags import errors, phone
from calltags.asgi import Answer, Incoming, failed, guarded, send_json
from calltags.errors import ApiError, StoreUnavailable
from calltags.http import JSONResponse, check_bearer, require_bearer
from calltags.ids import random_uuid
from calltags.postbacks import CALL_UUID
from calltags.services import Services, services
from calltags.store import Call, CallNotFound
from calltags.times import iso_ms

MAX_CAMPAIGN = 200


def call_json(call: Call) -> dict[str, Any]:
    body: dict[str, Any] = {
        "call_uuid": call.call_uuid,
        "caller_number": call.caller_number,
        "state": call.state,
        "tags": call.tags,
        "tag_sources": {
            name: {
                "publisher_id": source.publisher_id,
                "key_id": source.key_id,
                "set_at": iso_ms(source.set_at_ms),
            }
            for name, source in call.sources.items()
        },
        "started_at": iso_ms(call.started_ms),
        "publisher_id": call.publisher_id,
        "campaign": call.campaign,
    }
    if call.ended_ms is not None:
        body["ended_at"] = iso_ms(call.ended_ms)
    return body


def _tokens(svc: Services) -> tuple[str | None, str | None]:
    """The tokens the routing API accepts: the routing token and the admin token."""
    settings = svc.settings
    return (
        settings.routing_token.__str__() if settings.routing_token else None,
        settings.admin_token.__str__() if settings.admin_token else None,
    )


def _routing(request: Request) -> Services:
    svc = services(request)
    require_bearer(request, _tokens(svc))
    return svc


def _optional_text(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise errors.invalid_request(f"{name} must be a string")
    text = str(value)
    if len(text) > limit:
        raise errors.invalid_request(f"{name} is longer than {limit} characters")
    return text


def _call_not_found(call_uuid: str) -> ApiError:
    return errors.not_found("call_not_found", f"no call with call_uuid {call_uuid[:128]!r}")


async def connect(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /calls: the ASGI app (`App` hands it its requests directly)."""
    svc: Services = scope["app"].state.services
    await send_json(send, *await guarded(_connect(svc, Incoming(scope, receive))))


async def _connect(svc: Services, req: Incoming) -> Answer:
    try:
        check_bearer(req.header(b"authorization"), _tokens(svc))
        data = await req.json_object()
        raw = data.get("caller_number")
        if raw is None or raw == "":
            raise errors.missing_caller()
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise errors.invalid_caller_number(str(raw))
        caller = phone.normalize(str(raw), svc.settings.default_region)
        call_uuid = _optional_text(data, "call_uuid", 128)
        if call_uuid is None:
            call_uuid = random_uuid()
        elif not CALL_UUID.fullmatch(call_uuid):
            raise errors.invalid_request(
                "call_uuid must be 1-128 characters of A-Z a-z 0-9 _ . : -"
            )
        else:
            owner = await svc.store.caller_of(call_uuid)
            if owner is not None and owner != caller:
                raise ApiError(
                    409, "call_exists", f"call_uuid {call_uuid!r} belongs to another caller"
                )
        call, created = await svc.store.connect(
            caller,
            call_uuid,
            publisher_id=_optional_text(data, "publisher_id", 64),
            campaign=_optional_text(data, "campaign", MAX_CAMPAIGN),
        )
    except ApiError as exc:
        return failed(exc)
    except StoreUnavailable:
        return failed(errors.unavailable())
    return 201 if created else 200, orjson.dumps(call_json(call)), None


async def get_call(request: Request) -> Response:
    svc = _routing(request)
    call_uuid: str = request.path_params["call_uuid"]
    try:
        call = await svc.store.get_call(call_uuid)
    except CallNotFound as exc:
        raise _call_not_found(call_uuid) from exc
    return JSONResponse(call_json(call))


async def end_call(request: Request) -> Response:
    svc = _routing(request)
    call_uuid: str = request.path_params["call_uuid"]
    try:
        call, _ = await svc.store.end_call(call_uuid)
    except CallNotFound as exc:
        raise _call_not_found(call_uuid) from exc
    return JSONResponse(call_json(call))
