"""The admin API of tag schemas (Bearer CALLTAGS_ADMIN_TOKEN): PUT, GET and DELETE
/admin/tag_schemas/{name}, and the listing. A key names its schema in `tag_schema`
(POST .../keys, PATCH /admin/keys/{id}); a schema a usable key names cannot be deleted
(409 tag_schema_in_use, naming the keys): detach it from them first."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from starlette.requests import Request

from calltags.errors import ApiError
from calltags.models import TAG_SCHEMA_NAME, NamedTagSchema, TagSchema, TagSchemaList
from calltags.operations import Api, Auth, Routes
from calltags.services import Services
from calltags.tagschemas import TagSchemaInUse, TagSchemaNotFound

ROUTES = Routes(Api.ADMIN, Auth.ADMIN)
PATH = "/admin/tag_schemas"
_NAME = re.compile(TAG_SCHEMA_NAME)
_SCHEMA = ("tag_schema_not_found",)


def _name(request: Request) -> str:
    raw: str = request.path_params["name"]
    if not _NAME.fullmatch(raw):
        raise ApiError("tag_schema_not_found", f"no tag schema {raw[:64]!r}")
    return raw


@contextlib.contextmanager
def _missing_is_404() -> Iterator[None]:
    try:
        yield
    except TagSchemaNotFound as exc:
        raise ApiError("tag_schema_not_found", f"no tag schema {exc.args[0]!r}") from exc


@ROUTES.route("PUT", PATH + "/{name}", also={201: NamedTagSchema})
async def put_tag_schema(
    svc: Services, request: Request, body: TagSchema
) -> tuple[int, NamedTagSchema]:
    """Create or replace a tag schema (within 1 s on every web process)."""
    stored, created = await svc.tag_schemas.put(_name(request), body)
    return (201 if created else 200), stored


@ROUTES.route("GET", PATH)
async def list_tag_schemas(svc: Services, request: Request) -> TagSchemaList:
    """List the tag schemas."""
    return TagSchemaList(items=await svc.tag_schemas.list())


@ROUTES.route("GET", PATH + "/{name}", errors=_SCHEMA)
async def get_tag_schema(svc: Services, request: Request) -> NamedTagSchema:
    """A tag schema."""
    with _missing_is_404():
        return await svc.tag_schemas.get(_name(request))


@ROUTES.route("DELETE", PATH + "/{name}", errors=(*_SCHEMA, "tag_schema_in_use"))
async def delete_tag_schema(svc: Services, request: Request) -> NamedTagSchema:
    """Delete a tag schema no usable key names (409 while one does)."""
    name = _name(request)
    try:
        with _missing_is_404():
            return await svc.tag_schemas.delete(name)
    except TagSchemaInUse as exc:
        ids = ", ".join(str(key_id) for key_id in exc.args[0])
        raise ApiError(
            "tag_schema_in_use",
            f"the tag schema {name!r} is the tag_schema of the keys {ids}: set theirs to"
            " null or another schema first",
        ) from exc
