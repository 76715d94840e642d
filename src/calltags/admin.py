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
    STORAGE_RANGE,
    KeyNotFound,
    PublisherNotFound,
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
        )
    except PublisherNotFound as exc:
        raise _publisher_not_found(publisher_id) from exc
    base = str(request.base_url).rstrip("/")
    key["key"] = secret
    key["example_url"] = f"{base}/data_writing?key={secret}&caller_number=%2B15551234567&tag=value"
    return JSONResponse(key, status_code=201)


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
    try:
        return JSONResponse(await svc.publishers.update_key(key_id, changes))
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc


async def revoke_key(request: Request) -> Response:
    svc = _admin(request)
    key_id = _path_id(request, "key_id")
    try:
        return JSONResponse(await svc.publishers.revoke_key(key_id))
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc
