"""Reading requests and answering errors, for every API: body limits, query pairs,
Bearer tokens, and `error_answer`, the one function that turns an error into what the
client gets."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.requests import Request
from starlette.responses import Response

from calltags.errors import ApiError

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB

Answer = tuple[int, bytes, dict[str, str] | None]  # HTTP status, JSON body, extra headers


def error_answer(exc: ApiError) -> Answer:
    """What the client gets for an error, on every route of every API."""
    return exc.status, orjson.dumps({"error": exc.code, "message": exc.message}), exc.headers


class JSONResponse(Response):
    """A JSON answer of bytes already encoded (orjson or msgspec)."""

    media_type = "application/json"


def error_response(exc: ApiError) -> Response:
    """`error_answer` as a Starlette response, for the admin side."""
    status, body, headers = error_answer(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def too_large() -> ApiError:
    return ApiError("payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")


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
            raise ApiError("invalid_body", "Content-Length is not a number") from exc
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
        raise ApiError("invalid_body", "the body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ApiError("invalid_body", "the body must be a JSON object")
    return data


def query_values(request: Request) -> dict[str, str]:
    """The query parameters given a value (stripped), the last of a repeat winning."""
    return {name: value.strip() for name, value in request.query_params.items() if value.strip()}


def check_bearer(header: str | None, tokens: Iterable[str | None]) -> None:
    """ApiError 401 unless `header` (Authorization) carries one of `tokens`."""
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() == "bearer" and presented:
        given = presented.strip().encode("utf-8", "surrogatepass")
        for token in tokens:
            if token and hmac.compare_digest(given, token.encode()):
                return
    raise ApiError("unauthorized")
