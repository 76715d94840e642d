"""The admin API for publishers and keys (Bearer CALLTAGS_ADMIN_TOKEN): handlers and
their operations. The admin side (`adminapp`) authorizes, reads the body into its model
and answers; a handler gets the model and returns the answer's model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
    PublisherUpdate,
)
from calltags.operations import Api, Auth, Routes
from calltags.publishers import KeyNotFound, PublisherNotFound, example_url
from calltags.services import Services
from calltags.tagschemas import TagSchemaNotFound

ROUTES = Routes(Api.ADMIN, Auth.ADMIN)
_PUBLISHER = ("publisher_not_found",)
_KEY = ("key_not_found",)


def path_id(request: Request, name: str) -> int:
    """The whole-number id in the path, or the 404 of what it names."""
    raw: str = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(f"{name.removesuffix('_id')}_not_found", f"no {name} {raw[:32]!r}")
    return int(raw)


@contextlib.contextmanager
def missing_is_404() -> Iterator[None]:
    """A publisher or key the store does not find is the API's 404 naming it."""
    try:
        yield
    except PublisherNotFound as exc:
        raise ApiError("publisher_not_found", f"no publisher {exc.args[0]}") from exc
    except KeyNotFound as exc:
        raise ApiError("key_not_found", f"no usable key {exc.args[0]}") from exc
    except TagSchemaNotFound as exc:
        raise unknown_schema(exc) from exc


def unknown_schema(exc: TagSchemaNotFound) -> ApiError:
    """A key's body (or form) names a tag schema that does not exist: the body is wrong."""
    return ApiError("invalid_request", f"tag_schema: no tag schema {exc.args[0]!r}")


def public_base(svc: Services, request: Request) -> str:
    """The base of the postback URLs handed out: CALLTAGS_PUBLIC_URL, else this request's."""
    return svc.settings.public_url or str(request.base_url)


def _with_secret(svc: Services, request: Request, key: Key, secret: str, **more: str) -> NewSecret:
    base = public_base(svc, request)
    fields = {"key": secret, "example_url": example_url(base, secret), **more}
    return msgspec.convert({**msgspec.structs.asdict(key), **fields}, NewSecret)


@ROUTES.route("POST", "/admin/publishers", status=201)
async def create_publisher(svc: Services, request: Request, body: PublisherCreate) -> Publisher:
    """Create a publisher."""
    return await svc.publishers.create_publisher(body.name)


@ROUTES.route("GET", "/admin/publishers")
async def list_publishers(svc: Services, request: Request) -> Publishers:
    """List publishers."""
    return Publishers(items=await svc.publishers.list_publishers())


@ROUTES.route("PATCH", "/admin/publishers/{publisher_id}", errors=_PUBLISHER)
async def update_publisher(svc: Services, request: Request, body: PublisherUpdate) -> Publisher:
    """Change a publisher: its name."""
    with missing_is_404():
        return await svc.publishers.update_publisher(path_id(request, "publisher_id"), body)


@ROUTES.route("POST", "/admin/publishers/{publisher_id}/keys", status=201, errors=_PUBLISHER)
async def create_key(svc: Services, request: Request, body: KeyCreate) -> NewSecret:
    """Create a postback key: the answer holds its secret, shown this once."""
    with missing_is_404():
        publisher_id = path_id(request, "publisher_id")
        key, secret, signing_secret = await svc.publishers.create_key(publisher_id, body)
    return _with_secret(svc, request, key, secret, signing_secret=signing_secret)


@ROUTES.route("GET", "/admin/publishers/{publisher_id}/keys", errors=_PUBLISHER)
async def list_keys(svc: Services, request: Request) -> Keys:
    """List a publisher's keys (never their secrets)."""
    with missing_is_404():
        return Keys(items=await svc.publishers.list_keys(path_id(request, "publisher_id")))


@ROUTES.route("PATCH", "/admin/keys/{key_id}", errors=_KEY)
async def update_key(svc: Services, request: Request, body: KeyUpdate) -> Key:
    """Change a key: pause or resume it, rename it, its durations and security."""
    with missing_is_404():
        return await svc.publishers.update_key(path_id(request, "key_id"), body)


@ROUTES.route("POST", "/admin/keys/{key_id}/rotate", errors=_KEY)
async def rotate_key(svc: Services, request: Request, body: KeyRotate) -> NewSecret:
    """A new secret; the old one keeps working for grace_seconds."""
    with missing_is_404():
        key_id = path_id(request, "key_id")
        key, secret = await svc.publishers.rotate_key(key_id, body.grace_seconds)
    return _with_secret(svc, request, key, secret)


@ROUTES.route("DELETE", "/admin/keys/{key_id}", errors=_KEY)
async def revoke_key(svc: Services, request: Request) -> Key:
    """Revoke a key (within 1 s)."""
    with missing_is_404():
        return await svc.publishers.revoke_key(path_id(request, "key_id"))
