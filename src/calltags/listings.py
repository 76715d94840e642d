"""GET /admin/postbacks (the postback log) and GET /admin/calls (call records): newest
first, filtered, paged by an opaque cursor. The reading is `records.Records`; the log
page shows the same pages."""

from __future__ import annotations

from starlette.requests import Request

from calltags.models import CallFilters, CallPage, PostbackFilters, PostbackPage
from calltags.operations import Api, Auth, Routes
from calltags.services import Services

ROUTES = Routes(Api.ADMIN, Auth.ADMIN)


@ROUTES.route("GET", "/admin/postbacks")
async def list_postbacks(svc: Services, request: Request, query: PostbackFilters) -> PostbackPage:
    """The postback log, newest first."""
    return await svc.records.postbacks(query, svc.settings.default_region)


@ROUTES.route("GET", "/admin/calls")
async def list_calls(svc: Services, request: Request, query: CallFilters) -> CallPage:
    """Call records with their final tags, newest started first."""
    return await svc.records.calls(query, svc.settings.default_region)
