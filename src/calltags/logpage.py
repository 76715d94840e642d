"""The console's postback log page, /console/log: the log's filters, newest first, paged
on. Each entry shows its publisher and key by name (linked), its outcome (the status, or
the error code and its message), the caller as posted and as normalized, and the call it
went to (linked); opened, the request's fields as a table, then the raw entry.
/admin/log, the page's first address, leads here with its query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from calltags import pii
from calltags.models import (
    STATUS_FILTERS,
    Key,
    PostbackEntry,
    PostbackFilters,
    Publisher,
)
from calltags.operations import Api, Auth, Routes
from calltags.pages import Page, listing, redirect

PATH = "/console/log"
ROUTES = Routes(Api.ADMIN, Auth.SESSION)


@ROUTES.route("GET", "/admin/log", redirect=True, auth=Auth.NONE)
async def old_log_page(request: Request) -> Response:
    """The postback log page moved to /console/log (the query is kept)."""
    query = request.url.query
    return redirect(f"{PATH}?{query}" if query else PATH)


def _entry_view(
    entry: PostbackEntry,
    publishers: dict[int, Publisher],
    keys: dict[int, Key],
    personal: pii.Personal,
    reveal: bool,
) -> dict[str, Any]:
    item = msgspec.structs.asdict(entry)
    hidden = frozenset() if reveal else personal.get(entry.key_id or 0, frozenset())
    item["tags"] = pii.masked(entry.tags, hidden)
    return {
        **item,
        "publisher": publishers.get(entry.publisher_id or 0),
        "key": keys.get(entry.key_id or 0),
        "outcome": entry.status or entry.error or "",
        "accepted": entry.error is None,
        "tag_text": ", ".join(f"{k}={v}" for k, v in item["tags"].items()),
        "masked": bool(hidden & entry.tags.keys()),
        "payload": orjson.dumps(item, option=orjson.OPT_INDENT_2).decode(),
    }


@ROUTES.route("GET", PATH, html=True, query=PostbackFilters)
async def log_page(page: Page) -> Response:
    """The postback log page: filters, newest first, each entry opened to its fields
    (personal tags masked)."""
    return await _log_page(page, reveal=False)


@ROUTES.route("POST", PATH, html=True, query=PostbackFilters)
async def log_page_revealed(page: Page) -> Response:
    """The postback log page with personal tags shown (the page's reveal form)."""
    pii.revealed(str(page.request.url))
    return await _log_page(page, reveal=True)


async def _log_page(page: Page, reveal: bool) -> Response:
    svc = page.svc
    found = await listing(page, PostbackFilters, svc.records.postbacks)
    entries: Sequence[PostbackEntry] = found.items
    key_filter = found.query.key_id if found.query is not None else None
    publishers = {publisher.id: publisher for publisher in await svc.publishers.list_publishers()}
    wanted = {entry.key_id for entry in entries if entry.key_id is not None}
    keys = await svc.publishers.keys_by_id(wanted | ({key_filter} if key_filter else set()))
    backlog = svc.log.last
    personal = await pii.personal_tags(svc, keys.values())
    views = [_entry_view(entry, publishers, keys, personal, reveal) for entry in entries]
    context = {
        "section": "log",
        "entries": views,
        "reveal": reveal,
        "maskable": any(view["masked"] for view in views) or reveal,
        "here": page.request.url.query,
        "filtered_key": keys.get(key_filter or 0),
        "publishers": publishers,
        "statuses": STATUS_FILTERS,
        "backlog": backlog.total,
        "lag_seconds": round(backlog.oldest_age_seconds(), 1),
        **found.context,
    }
    return page.render("log.html", context, found.status)
