"""The console's calls, from the call records in Postgres: /console/calls lists recent
calls (filtered by caller in any format, state, campaign and time, paged on), and
/console/calls/{call_uuid} shows one call: each tag with its value, the publisher and
key that set it and when, and links to the postbacks that wrote them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from calltags import logpage, pii
from calltags.errors import ApiError
from calltags.models import CALL_STATES, CallFilters, TagSource
from calltags.operations import Api, Auth, Routes
from calltags.pages import Page, listing
from calltags.times import iso
from calltags.webhookpage import deliveries_of_call

PATH = "/console/calls"
ROUTES = Routes(Api.ADMIN, Auth.SESSION)
_SET_AT_SLACK = timedelta(milliseconds=1)  # a tag's set_at is its postback's time, or after


@ROUTES.route("GET", PATH, html=True, query=CallFilters)
async def calls_page(page: Page) -> Response:
    """Recent calls: state, caller, campaign, start and end, tag count; filtered."""
    found = await listing(page, CallFilters, page.svc.records.calls)
    context = {"section": "calls", "calls": found.items, "states": CALL_STATES, **found.context}
    return page.render("calls.html", context, found.status)


def writer_url(caller_number: str, source: TagSource) -> str:
    """The log page showing the postback that set a tag: the newest accepted one of its
    key for the caller, received by the tag's set_at."""
    until = iso(datetime.fromisoformat(source.set_at) + _SET_AT_SLACK)
    query = {
        "key_id": source.key_id,
        "caller_number": caller_number,
        "status": "accepted",
        "until": until,
        "limit": 1,
    }
    return f"{logpage.PATH}?{urlencode(query)}"


@ROUTES.route("GET", PATH + "/{call_uuid}", html=True, errors=("call_not_found",))
async def call_page(page: Page) -> Response:
    """A call: each tag, its value (personal ones masked), the publisher and key that set
    it, when, and the postback that wrote it."""
    return await _call_page(page, reveal=False)


@ROUTES.route("POST", PATH + "/{call_uuid}", html=True, errors=("call_not_found",))
async def call_page_revealed(page: Page) -> Response:
    """A call with its personal tags shown (the page's reveal form)."""
    pii.revealed(page.request.url.path)
    return await _call_page(page, reveal=True)


async def _call_page(page: Page, reveal: bool) -> Response:
    svc = page.svc
    call_uuid: str = page.request.path_params["call_uuid"]
    call = await svc.records.call(call_uuid)
    if call is None:
        raise ApiError(
            "call_not_found",
            f"no call record {call_uuid[:128]!r}: a call reaches the records within a second"
            " of its connect",
        )
    publishers = {publisher.id: publisher for publisher in await svc.publishers.list_publishers()}
    keys = await svc.publishers.keys_by_id(s.key_id for s in call.tag_sources.values())
    personal = await pii.personal_tags(svc, keys.values())
    tags: list[dict[str, Any]] = []
    for name, value in sorted(call.tags.items()):
        source = call.tag_sources.get(name)
        hidden = not reveal and source is not None and name in personal.get(source.key_id, ())
        tags.append(
            {
                "name": name,
                "value": pii.MASK if hidden else value,
                "masked": hidden,
                "source": source,
                "publisher": publishers.get(source.publisher_id) if source else None,
                "key": keys.get(source.key_id) if source else None,
                "writer_url": writer_url(call.caller_number, source) if source else None,
            }
        )
    caller = {"caller_number": call.caller_number}
    context = {
        "section": "calls",
        "call": call,
        "tags": tags,
        "reveal": reveal,
        "maskable": reveal or any(tag["masked"] for tag in tags),
        # With the caller: the log's index is by caller, and a call's postbacks are its.
        "log_url": f"{logpage.PATH}?{urlencode({**caller, 'call_uuid': call.call_uuid})}",
        "caller_url": f"{logpage.PATH}?{urlencode(caller)}",
        "deliveries": (await deliveries_of_call(page, call.call_uuid)).items,
    }
    return page.render("call.html", context)
