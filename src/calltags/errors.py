"""Exception classes, and the one table of API error codes."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class StoreUnavailable(Exception):
    """Redis or Postgres could not be reached or refused the write."""


class ApiError(Exception):
    """An error answered to the client as `{"error": code, "message": message}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def missing_key() -> ApiError:
    return ApiError(401, "missing_key", "a postback key is required: ?key=... or /data_writing/KEY")


def invalid_key() -> ApiError:
    return ApiError(401, "invalid_key", "the postback key is not valid")


def key_paused() -> ApiError:
    return ApiError(403, "key_paused", "the postback key is paused")


def missing_caller() -> ApiError:
    return ApiError(422, "missing_caller", "caller_number or call_uuid is required")


def invalid_caller_number(raw: str) -> ApiError:
    return ApiError(422, "invalid_caller_number", f"{raw!r} is not a possible phone number")


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "a valid Bearer token is required")


def unavailable(message: str = "the store is unavailable, retry shortly") -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": "1"})


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def invalid_request(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def method_not_allowed() -> ApiError:
    return ApiError(405, "method_not_allowed", "Method Not Allowed")
