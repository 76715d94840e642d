"""The publisher API: GET|POST /data_writing and /data_writing/{key}."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from calltags import errors, phone
from calltags.errors import ApiError, StoreUnavailable
from calltags.http import JSONResponse, error_response, iso_ms, read_body
from calltags.log import make_entry
from calltags.publishers import KeyInfo
from calltags.services import Services, services
from calltags.store import CallNotFound, PostbackResult, now_ms

MAX_TAGS = 100
MAX_TAG_VALUE_BYTES = 1024
MAX_PARAMS = 1000  # parameters read from one request; more is refused before any parsing
RESERVED = frozenset(("key", "caller_number", "call_uuid"))
_TAG_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
CALL_UUID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def _text(name: str, value: Any) -> str:
    """A parameter's value as text: JSON numbers and booleans become their text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ApiError(
        422,
        "invalid_tag",
        f"{name[:64]!r}: values must be strings, numbers or booleans",
    )


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_PARAMS
        )
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_body", "the form body is not valid UTF-8") from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_body", f"more than {MAX_PARAMS} parameters") from exc


async def _params(request: Request) -> dict[str, str]:
    """Query parameters, overridden by a form or JSON body's; the last of a repeat wins."""
    query = request.query_params.multi_items()
    if len(query) > MAX_PARAMS:
        raise ApiError(400, "invalid_request", f"more than {MAX_PARAMS} parameters")
    params = dict(query)
    if request.method != "POST":
        return params
    body = await read_body(request)
    if not body.strip():
        return params
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if content_type == "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "post JSON or a url-encoded form")
    if is_json or (content_type in ("", "text/plain") and body.lstrip()[:1] == b"{"):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_body", "the body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", "the JSON body must be an object")
        if len(data) > MAX_PARAMS:
            raise ApiError(400, "invalid_body", f"more than {MAX_PARAMS} parameters")
        for name, value in data.items():
            params[name] = _text(name, value)
    else:
        params.update(_form_pairs(body))
    return params


def _tags(params: dict[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for name, value in params.items():
        if name in RESERVED:
            continue
        if not _TAG_NAME.fullmatch(name):
            raise ApiError(
                422,
                "invalid_tag",
                f"tag name {name[:64]!r} must be 1-64 characters of A-Z a-z 0-9 _ . -",
            )
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ApiError(422, "invalid_tag", f"tag {name!r} is not valid UTF-8") from exc
        if size > MAX_TAG_VALUE_BYTES:
            raise ApiError(422, "invalid_tag", f"tag {name!r} is over {MAX_TAG_VALUE_BYTES} bytes")
        tags[name.lower()] = value
    if not tags:
        raise ApiError(422, "no_tags", "the postback carries no tags")
    if len(tags) > MAX_TAGS:
        raise ApiError(422, "too_many_tags", f"at most {MAX_TAGS} tags a postback")
    return tags


class _Outcome:
    """What one request did, for the log entry written whatever happened."""

    __slots__ = (
        "call_json", "call_uuid", "caller_number", "caller_raw", "key", "params", "secret", "tags",
    )  # fmt: skip

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.secret: str | None = None
        self.key: KeyInfo | None = None
        self.caller_raw: str | None = None
        self.caller_number: str | None = None
        self.call_uuid: str | None = None
        self.tags: dict[str, str] | None = None
        self.call_json: bytes | None = None


async def _handle(request: Request, svc: Services, out: _Outcome) -> dict[str, Any]:
    out.params = params = await _params(request)
    secret = request.path_params.get("key") or params.get("key")
    if not secret:
        raise errors.missing_key()
    out.secret = secret
    key = await svc.resolver.resolve(secret)
    if key is None:
        raise errors.invalid_key()
    out.key = key
    if key.paused:
        raise errors.key_paused()

    out.call_uuid = call_uuid = params.get("call_uuid") or None
    out.caller_raw = caller_raw = params.get("caller_number") or None
    if call_uuid is None and caller_raw is None:
        raise errors.missing_caller()
    region = svc.settings.default_region
    caller = phone.normalize(caller_raw, region) if caller_raw is not None else None
    out.caller_number = caller  # logged with a later rejection too, so filters find it
    out.tags = tags = _tags(params)
    if call_uuid is not None:
        found = await svc.store.caller_of(call_uuid) if CALL_UUID.fullmatch(call_uuid) else None
        if found is None or (caller is not None and caller != found):
            raise errors.not_found("call_not_found", f"no call with call_uuid {call_uuid[:128]!r}")
        caller = found
    assert caller is not None
    out.caller_number = caller
    try:
        result: PostbackResult = await svc.store.write_tags(
            caller,
            tags,
            publisher_id=key.publisher_id,
            key_id=key.id,
            cutoff_seconds=key.cutoff_seconds,
            storage_seconds=key.storage_seconds,
            call_uuid=call_uuid or "",
        )
    except CallNotFound as exc:
        raise errors.not_found("call_not_found", f"no call with call_uuid {call_uuid!r}") from exc
    body: dict[str, Any] = {"tag_values": tags, "caller_number": caller, "status": result.status}
    if result.call_uuid is not None:
        body["call_uuid"] = result.call_uuid
        out.call_uuid = result.call_uuid
        out.call_json = result.call_json
    if result.expires_at_ms is not None:
        body["expires_at"] = iso_ms(result.expires_at_ms)
    return body


async def data_writing(request: Request) -> Response:
    if request.method == "OPTIONS":  # not a CORS preflight, which the middleware answers
        return Response(status_code=204, headers={"Allow": "GET, POST, OPTIONS"})
    svc = services(request)
    if svc.log.full:  # refused before any write; not logged: the log is what is full
        svc.log.refused += 1
        return error_response(errors.unavailable("the postback log is full, retry shortly"))
    started = time.perf_counter_ns()
    received = now_ms()
    out = _Outcome()
    body: dict[str, Any] | None = None
    failure: ApiError | None = None
    try:
        body = await _handle(request, svc, out)
    except ApiError as exc:
        failure = exc
    except StoreUnavailable:
        failure = errors.unavailable()
    status_code = failure.status if failure is not None else 200
    entry = make_entry(
        received_ms=received,
        method=request.method,
        publisher_id=out.key.publisher_id if out.key else None,
        key_id=out.key.id if out.key else None,
        key_prefix=out.secret[:8] if out.secret and out.key is None else None,
        caller_raw=out.caller_raw,
        caller_number=out.caller_number,
        call_uuid=out.call_uuid,
        tags=out.tags
        if out.tags is not None
        else {k: v for k, v in out.params.items() if k not in RESERVED},
        status=body["status"] if body is not None else None,
        error=failure.code if failure is not None else None,
        http_status=status_code,
        remote_addr=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        latency_us=(time.perf_counter_ns() - started) // 1000,
        call=out.call_json,
    )
    try:
        await svc.log.append(entry)
    except StoreUnavailable:
        return error_response(errors.unavailable())
    if failure is not None:
        return error_response(failure)
    return JSONResponse(body)
