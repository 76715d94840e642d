"""The admin API for publishers and keys (Bearer CALLTAGS_ADMIN_TOKEN): handlers and
their operations. The admin side (`adminapp`) authorizes, reads the body into its model
and answers; a handler gets the model and returns the answer's model."""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from calltags.errors import ApiError
from calltags.models import (
    Key,
    KeyCreate,
    KeyRotate,
    Keys,
    KeyUpdate,
    NewSecret,
    Publisher,
    PublisherCreate,
    Publishers,
)
from calltags.operations import Api, Auth, Operation
from calltags.publishers import KeyNotFound, PublisherNotFound, example_url
from calltags.services import Services


def path_id(request: Request, name: str) -> int:
    """The whole-number id in the path, or the 404 of what it names."""
    raw: str = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(f"{name.removesuffix('_id')}_not_found", f"no {name} {raw[:32]!r}")
    return int(raw)


def _publisher_not_found(publisher_id: int) -> ApiError:
    return ApiError("publisher_not_found", f"no publisher {publisher_id}")


def _key_not_found(key_id: int) -> ApiError:
    return ApiError("key_not_found", f"no usable key {key_id}")


def _with_secret(svc: Services, request: Request, key: Key, secret: str, **more: str) -> NewSecret:
    base = svc.settings.public_url or str(request.base_url)
    fields = {"key": secret, "example_url": example_url(base, secret), **more}
    return msgspec.convert({**msgspec.structs.asdict(key), **fields}, NewSecret)


async def create_publisher(svc: Services, request: Request, body: PublisherCreate) -> Publisher:
    return await svc.publishers.create_publisher(body.name)


async def list_publishers(svc: Services, request: Request) -> Publishers:
    return Publishers(items=await svc.publishers.list_publishers())


async def create_key(svc: Services, request: Request, body: KeyCreate) -> NewSecret:
    publisher_id = path_id(request, "publisher_id")
    try:
        key, secret, signing_secret = await svc.publishers.create_key(publisher_id, body)
    except PublisherNotFound as exc:
        raise _publisher_not_found(publisher_id) from exc
    return _with_secret(svc, request, key, secret, signing_secret=signing_secret)


async def list_keys(svc: Services, request: Request) -> Keys:
    publisher_id = path_id(request, "publisher_id")
    try:
        return Keys(items=await svc.publishers.list_keys(publisher_id))
    except PublisherNotFound as exc:
        raise _publisher_not_found(publisher_id) from exc


async def update_key(svc: Services, request: Request, body: KeyUpdate) -> Key:
    key_id = path_id(request, "key_id")
    try:
        return await svc.publishers.update_key(key_id, body)
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc


async def rotate_key(svc: Services, request: Request, body: KeyRotate) -> NewSecret:
    """A new secret for the key; the old one keeps working for `grace_seconds`."""
    key_id = path_id(request, "key_id")
    try:
        key, secret = await svc.publishers.rotate_key(key_id, body.grace_seconds)
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc
    return _with_secret(svc, request, key, secret)


async def revoke_key(svc: Services, request: Request) -> Key:
    key_id = path_id(request, "key_id")
    try:
        return await svc.publishers.revoke_key(key_id)
    except KeyNotFound as exc:
        raise _key_not_found(key_id) from exc


_PUBLISHER = ("publisher_not_found",)
_KEY = ("key_not_found",)
OPERATIONS = (
    Operation(
        Api.ADMIN, "POST", "/admin/publishers", "Create a publisher", create_publisher,
        Auth.ADMIN, body=PublisherCreate, status=201, response=Publisher,
    ),
    Operation(
        Api.ADMIN, "GET", "/admin/publishers", "List publishers", list_publishers,
        Auth.ADMIN, response=Publishers,
    ),
    Operation(
        Api.ADMIN, "POST", "/admin/publishers/{publisher_id}/keys",
        "Create a postback key: the answer holds its secret, shown this once", create_key,
        Auth.ADMIN, body=KeyCreate, status=201, response=NewSecret, errors=_PUBLISHER,
    ),
    Operation(
        Api.ADMIN, "GET", "/admin/publishers/{publisher_id}/keys",
        "List a publisher's keys (never their secrets)", list_keys,
        Auth.ADMIN, response=Keys, errors=_PUBLISHER,
    ),
    Operation(
        Api.ADMIN, "PATCH", "/admin/keys/{key_id}",
        "Change a key: pause or resume it, rename it, its durations and security", update_key,
        Auth.ADMIN, body=KeyUpdate, response=Key, errors=_KEY,
    ),
    Operation(
        Api.ADMIN, "DELETE", "/admin/keys/{key_id}", "Revoke a key (within 1 s)", revoke_key,
        Auth.ADMIN, response=Key, errors=_KEY,
    ),
    Operation(
        Api.ADMIN, "POST", "/admin/keys/{key_id}/rotate",
        "A new secret; the old one keeps working for grace_seconds", rotate_key,
        Auth.ADMIN, body=KeyRotate, response=NewSecret, errors=_KEY,
    ),
)  # fmt: skip
