"""The console's tag schemas page, /console/tag_schemas: every schema with its rules, as
the admin API stores them (read-only: schemas are written with PUT
/admin/tag_schemas/{name}; a key's schema is chosen on its publisher's page)."""

from __future__ import annotations

from starlette.responses import Response

from calltags.operations import Api, Auth, Routes
from calltags.pages import Page

PATH = "/console/tag_schemas"
ROUTES = Routes(Api.ADMIN, Auth.SESSION)


@ROUTES.route("GET", PATH, html=True)
async def schemas_page(page: Page) -> Response:
    """The tag schemas: each declared tag's type and rules, and what becomes of others."""
    context = {"section": "tag_schemas", "schemas": await page.svc.tag_schemas.list()}
    return page.render("tag_schemas.html", context)
