"""Exception classes, and the one table of API error codes.

Every error any route answers is `{"error": CODE, "message": TEXT}` with the HTTP
status the table gives the code (`ApiError`); the OpenAPI document's error responses
and the log page's status filter are read from the same table.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, ParamSpec, TypeVar

RETRY_AFTER_SECONDS = 1  # what a 503 tells the client to wait before retrying


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class StoreUnavailable(Exception):
    """Redis or Postgres could not be reached or refused the write."""


class WriteUnconfirmed(StoreUnavailable):
    """A postback's write was not confirmed: the replicas CALLTAGS_WRITE_ACK=replica asks
    for did not hold it in time, or Redis's reply was lost. It is answered 503 (it may
    have happened, and may be lost); the store has already logged the request as
    answered so (the same log entry, marked)."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


class StoreBoundary:
    """A store's boundary: each public coroutine a subclass defines raises
    StoreUnavailable where a driver raised one of the class's `driver_errors`, so that
    no caller handles driver errors, whichever command inside failed."""

    driver_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                setattr(cls, name, _wrapped(member, cls.driver_errors))


def _wrapped(
    method: Callable[_P, Awaitable[_R]], errors: tuple[type[BaseException], ...]
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except errors as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


async def gathered(
    awaitables: Iterable[Awaitable[Any]],
    kept: type[BaseException] | tuple[type[BaseException], ...],
) -> list[Any]:
    """The awaitables' results, awaited together, an exception of the `kept` kinds in
    place of the result it stopped; any other exception is raised."""
    got = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in got:
        if isinstance(result, BaseException) and not isinstance(result, kept):
            raise result
    return got


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str  # the message when the raiser gives none
    logged: bool = False  # a postback can be refused with it: it is in the postback log


_TABLE = (
    # The publisher API (/data_writing): each refusal is a postback log entry.
    ErrorCode(
        "missing_key", 401, "a postback key is required: ?key=... or /data_writing/KEY", True
    ),
    ErrorCode("invalid_key", 401, "the postback key is not valid", True),
    ErrorCode("missing_signature", 401, "this key requires signed postbacks", True),
    ErrorCode("invalid_signature", 401, "the signature does not match the request", True),
    ErrorCode("key_paused", 403, "the postback key is paused", True),
    ErrorCode("address_not_allowed", 403, "this key does not accept posts from here", True),
    ErrorCode("missing_caller", 422, "caller_number or call_uuid is required", True),
    ErrorCode("invalid_caller_number", 422, "not a possible phone number", True),
    ErrorCode("no_tags", 422, "the postback carries no tags", True),
    ErrorCode("invalid_tag", 422, "a tag name or value breaks the tag rules", True),
    ErrorCode("too_many_tags", 422, "too many tags in one postback", True),
    ErrorCode(
        "invalid_idempotency_key", 422, "an idempotency key is 1-255 printable characters", True
    ),
    ErrorCode(
        "idempotency_key_reused",
        422,
        "this idempotency key was used with other parameters",
        True,
    ),
    ErrorCode("too_many_items", 422, "too many items in one bulk post", True),
    # Refusals of the key's tag schema (see tagschemas.py).
    ErrorCode("missing_tag", 422, "a tag the key's tag schema requires is missing", True),
    ErrorCode("unknown_tag", 422, "a tag the key's tag schema does not declare", True),
    ErrorCode("call_not_found", 404, "no call with that call_uuid", True),
    ErrorCode("invalid_body", 400, "the body cannot be read", True),
    ErrorCode("invalid_query", 400, "the query string cannot be read", True),
    ErrorCode("unsupported_media_type", 415, "post JSON or a url-encoded form", True),
    ErrorCode("payload_too_large", 413, "the body is too large", True),
    ErrorCode("rate_limited", 429, "the key's rate limit is spent, retry later", True),
    ErrorCode(
        "too_many_invalid_keys", 429, "too many invalid keys from this address; retry later", True
    ),
    ErrorCode("unavailable", 503, "a store is unavailable, retry shortly", True),
    # Written by the workers for a log entry they could not read (never answered).
    ErrorCode("undecodable_entry", 500, "the log entry could not be read", True),
    # Routing and admin.
    ErrorCode("unauthorized", 401, "a valid Bearer token is required"),
    ErrorCode("invalid_request", 422, "the request does not fit the API"),
    ErrorCode("call_exists", 409, "that call_uuid belongs to another caller"),
    ErrorCode("publisher_not_found", 404, "no such publisher"),
    ErrorCode("key_not_found", 404, "no such usable key"),
    ErrorCode("webhook_not_found", 404, "no such webhook"),
    ErrorCode("tag_schema_not_found", 404, "no such tag schema"),
    ErrorCode("tag_schema_in_use", 409, "a usable key uses this tag schema"),
    # Any route.
    ErrorCode("not_found", 404, "no such route"),
    ErrorCode("method_not_allowed", 405, "this route does not take that method"),
    ErrorCode("preflight_refused", 400, "the CORS preflight asks for what is not allowed"),
    ErrorCode("internal_error", 500, "internal error"),
)
ERRORS: dict[str, ErrorCode] = {error.code: error for error in _TABLE}
LOGGED_CODES = tuple(error.code for error in _TABLE if error.logged)


class ApiError(Exception):
    """An error answered to the client as `{"error": code, "message": message}`, with
    the status of `code` in the table; a 503 always says when to retry."""

    def __init__(
        self, code: str, message: str | None = None, headers: dict[str, str] | None = None
    ):
        spec = ERRORS[code]
        self.code = code
        self.status = spec.status
        self.message = message if message is not None else spec.message
        if self.status == 503:
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
        self.headers = headers
        super().__init__(self.message)


def invalid_caller_number(raw: str) -> ApiError:
    return ApiError("invalid_caller_number", f"{raw!r} is not a possible phone number")


def call_not_found(call_uuid: str) -> ApiError:
    return ApiError("call_not_found", f"no call with call_uuid {call_uuid[:128]!r}")


def invalid_request(message: str) -> ApiError:
    return ApiError("invalid_request", message)
