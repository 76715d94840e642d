"""GET /admin/postbacks (the postback log) and GET /admin/calls (call records): newest
first, filtered, paged by an opaque cursor. The reading is `records.Records`; the log
page shows the same pages."""

from __future__ import annotations

from starlette.requests import Request

from calltags.models import CallFilters, CallPage, PostbackFilters, PostbackPage
from calltags.operations import Api, Auth, Operation
from calltags.services import Services


async def list_postbacks(svc: Services, request: Request, query: PostbackFilters) -> PostbackPage:
    return await svc.records.postbacks(query, svc.settings.default_region)


async def list_calls(svc: Services, request: Request, query: CallFilters) -> CallPage:
    return await svc.records.calls(query, svc.settings.default_region)


OPERATIONS = (
    Operation(
        Api.ADMIN, "GET", "/admin/postbacks", "The postback log, newest first", list_postbacks,
        Auth.ADMIN, query=PostbackFilters, response=PostbackPage,
    ),
    Operation(
        Api.ADMIN, "GET", "/admin/calls", "Call records with their final tags, newest first",
        list_calls, Auth.ADMIN, query=CallFilters, response=CallPage,
    ),
)  # fmt: skip
