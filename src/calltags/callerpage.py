"""The console's caller page, /console/callers/{number} (the number in any format): what
Redis holds of the caller now (pending tags, personal ones masked until revealed, and
calls), links to the caller's postbacks and call records, and two actions, each a
CSRF-carrying form: retract the pending tags (all, or one publisher's) and erase the
caller everywhere (the admin API's own handlers, see callerapi)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.responses import Response

from calltags import callpage, logpage, phone, pii
from calltags.callerapi import caller_data, erase
from calltags.errors import ApiError
from calltags.models import CallerLookup, CallerQuery, EraseConfirm, Erasure
from calltags.operations import Api, Auth, Routes
from calltags.pages import Page, Refusal, redirect

PATH = "/console/callers"
ROUTES = Routes(Api.ADMIN, Auth.SESSION)
_NUMBER = ("invalid_caller_number",)


def page_url(number: str) -> str:
    return f"{PATH}/{quote(number, safe='')}"


@ROUTES.route("GET", PATH, html=True, query=CallerLookup)
async def lookup(page: Page) -> Response:
    """Find a caller by number (any format): to the caller's page."""
    query = page.query(CallerLookup)
    if not query.number:
        return await _render(page, None)
    try:
        number = phone.normalize(query.number, page.svc.settings.default_region)
    except ApiError as exc:
        refused = Refusal("lookup", exc.message, exc.status, {"number": query.number})
        return await _render(page, None, refused=refused)
    return redirect(page_url(number))


def _number(page: Page) -> str:
    return phone.normalize(page.request.path_params["number"], page.svc.settings.default_region)


@ROUTES.route("GET", PATH + "/{number}", html=True, errors=_NUMBER)
async def caller_page(page: Page) -> Response:
    """A caller: pending tags and calls in Redis, and the retract and erase forms."""
    return await _render(page, _number(page))


@ROUTES.route("POST", PATH + "/{number}", html=True, errors=_NUMBER)
async def caller_page_revealed(page: Page) -> Response:
    """A caller's page with personal tags shown (the page's reveal form)."""
    pii.revealed(page.request.url.path)
    return await _render(page, _number(page), reveal=True)


@ROUTES.route("POST", PATH + "/{number}/retract", html=True, form=CallerQuery, errors=_NUMBER)
async def retract(page: Page) -> Response:
    """Retract the caller's pending tags (of one publisher, if chosen)."""
    number = _number(page)
    try:
        publisher_id = page.form(CallerQuery).publisher_id
    except ApiError as exc:
        return await _render(page, number, refused=page.refusal("retract", exc))
    count = await page.svc.store.retract_pending(number, publisher_id)
    return await _render(page, number, retracted=count)


@ROUTES.route("POST", PATH + "/{number}/erase", html=True, form=EraseConfirm, errors=_NUMBER)
async def erase_caller(page: Page) -> Response:
    """Erase the caller everywhere; the page shows what was removed."""
    number = _number(page)
    try:
        page.form(EraseConfirm)
    except ApiError as exc:
        return await _render(page, number, refused=page.refusal("erase", exc))
    return await _render(page, number, erased=await erase(page.svc, number))


async def _render(
    page: Page,
    number: str | None,
    *,
    reveal: bool = False,
    refused: Refusal | None = None,
    retracted: int | None = None,
    erased: Erasure | None = None,
) -> Response:
    svc = page.svc
    context: dict[str, Any] = {
        "section": "callers",
        "number": number,
        "refused": refused,
        "retracted": retracted,
        "erased": erased,
        "reveal": reveal,
    }
    if number is not None:
        data = await caller_data(svc, number)
        key_ids = {tag.key_id for tag in data.pending}
        keys = await svc.publishers.keys_by_id(key_ids)
        personal = await pii.personal_tags(svc, keys.values())
        pending = []
        for tag in data.pending:
            hidden = not reveal and tag.name in personal.get(tag.key_id, ())
            pending.append({"tag": tag, "value": pii.MASK if hidden else tag.value,
                            "masked": hidden, "key": keys.get(tag.key_id)})  # fmt: skip
        publishers = {p.id: p for p in await svc.publishers.list_publishers()}
        caller = urlencode({"caller_number": number})
        context.update(
            data=data,
            pending=pending,
            maskable=reveal or any(item["masked"] for item in pending),
            publishers=publishers,
            url=page_url(number),
            log_url=f"{logpage.PATH}?{caller}",
            calls_url=f"{callpage.PATH}?{caller}",
        )
    status = refused.status if refused else 200
    return page.render("caller.html", context, status)
