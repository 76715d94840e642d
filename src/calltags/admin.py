"""The admin API for publishers and keys (Bearer CALLTAGS_ADMIN_TOKEN)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from calltags import errors
from calltags.errors import ApiError
from calltags.http import JSONResponse, json_object, require_bearer
from calltags.publishers import (
    CUTOFF_RANGE,
    KEY_TYPES,
    MAX_CIDRS,
    STORAGE_RANGE,
    KeyNotFound,
    PublisherNotFound,
    parse_cidrs,
)
from calltags.services import Services, services


def _admin(request: Request) -> Services:
    svc = services(request)
    token = svc.settings.admin_token
    require_bearer(request, (str(token) if token else None,))
    return svc


def _path_id(request: Request, name: str) -> int:
    raw: str = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise errors.not_found(f"{name.removesuffix('_id')}_not_found", f"no {name} {raw[:32]!r}")
    return int(raw)


def _name(data: dict[str, Any], required: bool = True) -> str | None:
    name = data.get("name")
    if name is None and not required:
        return None
    # Postgres text cannot hold NUL: refuse it here rather than fail the insert with a 500.
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200 or "\x00" in name:
        raise errors.invalid_request("name must be a string of 1-200 characters, without NUL")
    return name.strip()


def _seconds(data: dict[str, Any], field: str, bounds: tuple[int, int]) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.invalid_request(f"{field} must be a whole number from {low} to {high}")
    return value


MAX_RATE = 1_000_000.0  # postbacks a second: anything above is a typo
GRACE_RANGE = (0, 2_592_000)


def _security_options(data: dict[str, Any]) -> dict[str, Any]:
    """The optional security fields of a key create or PATCH, validated."""
    options: dict[str, Any] = {}
    if "require_signature" in data:
        if not isinstance(data["require_signature"], bool):
            raise errors.invalid_request("require_signature must be true or false")
        options["require_signature"] = data["require_signature"]
    if "allowed_cidrs" in data:
        cidrs = data["allowed_cidrs"]
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise errors.invalid_request("allowed_cidrs must be a list of CIDR strings")
        try:
            parse_cidrs(cidrs)
        except ValueError as exc:
            raise errors.invalid_request(
                f"allowed_cidrs: {exc} (at most {MAX_CIDRS} networks like 203.0.113.0/24)"
            ) from exc
        options["allowed_cidrs"] = cidrs
    if "rate_limit_per_second" in data:
        rate = data["rate_limit_per_second"]
        valid = (
            isinstance(rate, int | float) and not isinstance(rate, bool) and 0 < rate <= MAX_RATE
        )
        if rate is not None and not valid:
            raise errors.invalid_request(
                f"rate_limit_per_second must be above 0 and at most {MAX_RATE:.0f}, or null"
            )
        options["rate_limit_per_second"] = float(rate) if rate is not None else None
    if "rate_limit_burst" in data:
        burst = data["rate_limit_burst"]
        valid = isinstance(burst, int) and not isinstance(burst, bool) and 1 <= burst <= 10_000_000
        if burst is not None and not valid:
            raise errors.invalid_request("rate_limit_burst must be a whole number from 1, or null")
        options["rate_limit_burst"] = burst
    return options


def _publisher_not_found(publisher_id: int) -> ApiError:
    return errors.not_found("publisher_not_found", f"no publisher {publisher_id}")


def _key_not_found(key_id: int) -> ApiError:
    return errors.not_found("key_not_found", f"no usable key {key_id}")


async def create_publisher(request: Request) -> Response:
    svc = _admin(request)
    name = _name(await json_object(request))
    assert name is not None
    return JSONResponse(await svc.publishers.create_publisher(name), status_code=201)


async def list_publishers(request: Request) -> Response:
    svc = _admin(request)
    return JSONResponse({"items": await svc.publishers.list_publishers()})


async def create_key(request: Request) -> Response:
    svc = _admin(request)
    publisher_id = _path_id(request, "publisher_id")
    data = await json_object(request)
    name = _name(data)
    assert name is not None
    key_type = data.get("type", "call_data_writing")
    if key_type not in KEY_TYPES:
        raise errors.invalid_request(f"type must be one of {', '.join(KEY_TYPES)}")
    cutoff = _seconds(data, "end_call_cutoff_seconds", CUTOFF_RANGE)
    storage = _seconds(data, "storage_duration_seconds", STORAGE_RANGE)
    try:
        key, secret = await svc.publishers.create_key(
            publisher_id,
            name,
            key_type,
            cutoff if cutoff is not None else 3600,
            storage if storage is not None else 86400,
            **_security_options(data),
        )
    except PublisherNotFound as exc:
        raise _publisher_not_found(publisher_id) from exc
    key["key"] = secret
    key["example_url"] = _example_url(request, secret)
    return JSONResponse(key, status_code=201)


def _example_url(request: Request, secret: str) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}/data_writing?key={secret}&caller_number=%2B15551234567&tag=value"


async def list_keys(request: Request) -> Response:
    svc = _admin(request)
    publisher_id = _path_id(request, "publisher_id")
    try:
        return JSONResponse({"items": await svc.publishers.list_keys(publisher_id)})
    except PublisherNotFound as exc:
        raise _publisher_not_found(publisher_id) from exc


async def update_key(request: Request) -> Response:
    svc = _admin(request)
    key_id = _path_id(request, "key_id")
    data = await json_object(request)
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["name"] = _name(data)
    if "paused" in data:
        if not isinstance(data["paused"], bool):
            raise errors.invalid_request("paused must be true or false")
        changes["paused"] = data["paused"]
    for field, bounds in (
        ("end_call_cutoff_seconds", CUTOFF_RANGE),
        ("storage_duration_seconds", STORAGE_RANGE),
    ):
        if field in data:
            value = _seconds(data, field, bounds)
            if value is None:
                raise errors.invalid_request(f"{field} must be a whole number")
            changes[field] = value
    changes.update(_security_options(data))
    try:
        return JSONResponse(await svc.publishers.update_key(key_id, changes))
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc


async def rotate_key(request: Request) -> Response:
    """A new secret for the key; the old one keeps working for `grace_seconds`."""
    svc = _admin(request)
    key_id = _path_id(request, "key_id")
    data = await json_object(request)
    grace = _seconds(data, "grace_seconds", GRACE_RANGE)
    try:
        key, secret = await svc.publishers.rotate_key(key_id, 86400 if grace is None else grace)
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc
    key["key"] = secret
    key["example_url"] = _example_url(request, secret)
    return JSONResponse(key)


async def revoke_key(request: Request) -> Response:
    svc = _admin(request)
    key_id = _path_id(request, "key_id")
    try:
        return JSONResponse(await svc.publishers.revoke_key(key_id))
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc
