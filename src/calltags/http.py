"""JSON responses and request helpers shared by the routes."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.requests import Request
from starlette.responses import Response

from calltags import errors
from calltags.errors import ApiError

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )


def too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or ApiError 413 once it passes `limit` bytes."""
    return await collect_body(request.headers.get("content-length"), request.stream(), limit)


async def collect_body(
    declared: str | bytes | None, chunks: AsyncIterator[bytes], limit: int = MAX_BODY_BYTES
) -> bytes:
    """A body from its chunks, or ApiError 413 once it passes `limit` bytes (at once when
    `declared`, the Content-Length, says so; 400 when that is no number)."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large()
        except ValueError as exc:
            raise ApiError(400, "invalid_body", "Content-Length is not a number") from exc
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large()
        parts.append(chunk)
    return b"".join(parts)


def query_pairs(text: str, max_fields: int) -> list[tuple[str, str]]:
    """The name/value pairs of a query string or url-encoded form, exactly as
    `urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields)`
    gives them (ValueError past `max_fields`), with one shortcut: a pair with no "%" or
    "+" in it, the usual case, is taken as it is instead of going through `unquote_plus`.
    """
    if not text:
        return []
    parts = text.split("&")
    if len(parts) > max_fields:
        raise ValueError("Max number of fields exceeded")
    pairs: list[tuple[str, str]] = []
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote_plus(name)
            value = unquote_plus(value)
        pairs.append((name, value))
    return pairs


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object from a body, or ApiError 400 `invalid_body`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_body", "the body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return data


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object ({} when empty), or ApiError 400 `invalid_body`."""
    body = await read_body(request)
    return parse_object(body) if body.strip() else {}


def require_bearer(request: Request, tokens: Iterable[str | None]) -> None:
    """ApiError 401 unless the Authorization header carries one of `tokens`."""
    check_bearer(request.headers.get("authorization"), tokens)


def check_bearer(header: str | None, tokens: Iterable[str | None]) -> None:
    """ApiError 401 unless `header` (Authorization) carries one of `tokens`."""
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() == "bearer" and presented:
        given = presented.strip().encode("utf-8", "surrogatepass")
        for token in tokens:
            if token and hmac.compare_digest(given, token.encode()):
                return
    raise errors.unauthorized()
