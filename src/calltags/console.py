"""The account manager's console: sign-in, publishers, a publisher's page with its
postback keys (add, pause and resume, rotate, revoke, test), under /console. Pages are
server-rendered (`pages`); every form is read through the admin API's own models
(`forms`) and carries the session's CSRF token (`session`). The postback log is
`logpage`, the calls `callpage`.

A new key's secret and ready URL are shown once, on the page that answers the POST that
made them: never in a URL, a redirect, a log line or the postback log.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from calltags import forms, pages, postbacks, session
from calltags.admin import missing_is_404, path_id, public_base, unknown_schema
from calltags.errors import ApiError
from calltags.http import read_body
from calltags.models import (
    KEY_TYPES,
    Key,
    KeyCreate,
    KeyRotate,
    KeySchemaChoice,
    KeyTest,
    KeyUpdate,
    Publisher,
    PublisherCreate,
    PublisherUpdate,
)
from calltags.operations import Api, Auth, Routes
from calltags.pages import Page, Refusal, redirect
from calltags.publishers import KeyNotFound, example_url
from calltags.services import Services, services
from calltags.tagschemas import TagSchemaNotFound

ROUTES = Routes(Api.ADMIN, Auth.SESSION)
URL_CALLER = "CALLER_NUMBER"  # the placeholder of the ready URL, which the publisher fills
LOGIN_BODY_LIMIT = 8192  # bytes of a sign-in form
ACTIVITY = timedelta(hours=24)  # the period of the postback counts the pages show
KEY_TYPE_LABELS = {name: name.replace("_", " ").title() for name in KEY_TYPES}
_TEST_SEPARATORS = re.compile(r"[\r\n&]+")
_PUBLISHER = ("publisher_not_found",)
_KEY = ("key_not_found",)


# -- signing in ---------------------------------------------------------------------------


async def to_console(request: Request) -> Response:
    """To the console (its sign-in page first, unless signed in)."""
    return redirect(pages.HOME_PATH)


for _path in ("/", "/admin", "/console"):
    ROUTES.route("GET", _path, redirect=True, auth=Auth.NONE)(to_console)


@ROUTES.route("GET", "/admin/login", redirect=True, auth=Auth.NONE)
async def old_login(request: Request) -> Response:
    """The sign-in page moved to /console/login."""
    return redirect(pages.LOGIN_PATH)


@ROUTES.route("GET", pages.LOGIN_PATH, html=True, auth=Auth.NONE)
async def login_form(request: Request) -> Response:
    """The sign-in page (the admin token)."""
    target = pages.safe_next(request.query_params.get("next"))
    if session.viewer(request, services(request)) is not None:
        return redirect(target)
    return pages.render(request, "login.html", {"message": None, "next": target})


@ROUTES.route("POST", pages.LOGIN_PATH, redirect=True, auth=Auth.NONE)
async def login(request: Request) -> Response:
    """Sign in with the admin token (form field `token`): a session cookie."""
    token = services(request).admin_token()
    form = forms.fields(await read_body(request, LOGIN_BODY_LIMIT))
    target = pages.safe_next(form.get("next"))
    given = form.get("token", "").strip()
    if token is None or not hmac.compare_digest(given.encode(), token.encode()):
        context = {"message": "That token is not valid.", "next": target}
        return pages.render(request, "login.html", context, 401)
    response = redirect(target)
    session.sign_in(response, token)
    return response


@ROUTES.route("POST", "/console/logout", redirect=True)
async def logout(page: Page) -> Response:
    """Sign out."""
    response = redirect(pages.LOGIN_PATH)
    session.sign_out(response)
    return response


# -- publishers ----------------------------------------------------------------------------


def _since() -> datetime:
    return datetime.now(UTC) - ACTIVITY


@ROUTES.route("GET", pages.HOME_PATH, html=True)
async def publishers_page(page: Page) -> Response:
    """Publishers: their keys and last day's postbacks; a form to add one."""
    return await _publishers(page)


async def _publishers(page: Page, refused: Refusal | None = None) -> Response:
    svc = page.svc
    found = await svc.publishers.list_publishers()
    stats = await svc.records.publisher_stats(_since())
    rows = [{"publisher": publisher, "stats": stats.get(publisher.id)} for publisher in found]
    context = {
        "section": "publishers",
        "rows": rows,
        "refused": refused,
        "fields": forms.specs(PublisherCreate),
    }
    return page.render("publishers.html", context, refused.status if refused else 200)


@ROUTES.route("POST", pages.HOME_PATH, html=True, form=PublisherCreate)
async def add_publisher(page: Page) -> Response:
    """Add a publisher; then to its page."""
    try:
        new = page.form(PublisherCreate)
    except ApiError as exc:
        return await _publishers(page, page.refusal("add_publisher", exc))
    publisher = await page.svc.publishers.create_publisher(new.name)
    return redirect(f"/console/publishers/{publisher.id}")


# -- a publisher's page ----------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A secret to show this once: a new key's, or a rotated one's."""

    key: Key
    secret: str
    url: str  # the ready postback URL
    signing_secret: str | None  # at creation only


@dataclass(frozen=True)
class Tried:
    """The answer a key test got, as the publisher would have."""

    key_id: int
    status: int
    body: str  # the JSON answer, indented
    values: dict[str, str]  # what the form held


async def _publisher_and_keys(svc: Services, publisher_id: int) -> tuple[Publisher, list[Key]]:
    with missing_is_404():
        publisher = await svc.publishers.get_publisher(publisher_id)
        return publisher, await svc.publishers.list_keys(publisher_id)


async def _key(svc: Services, key_id: int) -> Key:
    """The key (revoked ones too), or the 404 page."""
    with missing_is_404():
        return await svc.publishers.get_key(key_id)


def _status(key: Key) -> str:
    return "revoked" if key.revoked else "paused" if key.paused else "active"


async def _publisher(
    page: Page,
    publisher_id: int,
    *,
    refused: Refusal | None = None,
    secret: Secret | None = None,
    tried: Tried | None = None,
) -> Response:
    """The publisher's page, with what the request that leads here has to show."""
    svc = page.svc
    publisher, keys = await _publisher_and_keys(svc, publisher_id)
    counts = await svc.records.key_postbacks(publisher_id, _since())
    rows = [
        {"key": key, "status": _status(key), "postbacks": counts.get(key.id, 0)} for key in keys
    ]
    context: dict[str, Any] = {
        "section": "publishers",
        "publisher": publisher,
        "rows": rows,
        "refused": refused,
        "secret": secret,
        "tried": tried,
        "rename": forms.specs(PublisherUpdate),
        "create": forms.specs(KeyCreate),
        "rotate": forms.specs(KeyRotate),
        "key_types": KEY_TYPE_LABELS,
        "default_rate": svc.settings.rate_limit,
        "tag_schemas": [schema.name for schema in await svc.tag_schemas.list()],
        "console_agent": postbacks.CONSOLE_AGENT,
    }
    status = refused.status if refused else 200
    return page.render("publisher.html", context, status)


async def _on_publisher(
    page: Page, form: str, action: Callable[[int], Awaitable[Response]]
) -> Response:
    """`action` on the publisher of the path; a refusal is its page with the message."""
    publisher_id = path_id(page.request, "publisher_id")
    try:
        with missing_is_404():
            return await action(publisher_id)
    except ApiError as exc:  # a 404 too: the publisher's page then says it
        return await _publisher(page, publisher_id, refused=page.refusal(form, exc))


@ROUTES.route("GET", "/console/publishers/{publisher_id}", html=True, errors=_PUBLISHER)
async def publisher_page(page: Page) -> Response:
    """A publisher: its name, its postback keys and their actions, the add-key form."""
    return await _publisher(page, path_id(page.request, "publisher_id"))


@ROUTES.route(
    "POST", "/console/publishers/{publisher_id}", html=True, form=PublisherUpdate, errors=_PUBLISHER
)
async def rename_publisher(page: Page) -> Response:
    """Rename a publisher; then back to its page."""

    async def rename(publisher_id: int) -> Response:
        await page.svc.publishers.update_publisher(publisher_id, page.form(PublisherUpdate))
        return redirect(f"/console/publishers/{publisher_id}")

    return await _on_publisher(page, "rename", rename)


@ROUTES.route(
    "POST", "/console/publishers/{publisher_id}/keys", html=True, form=KeyCreate, errors=_PUBLISHER
)
async def add_key(page: Page) -> Response:
    """Add a postback key: the page shows its secret and ready URL, this once."""

    async def add(publisher_id: int) -> Response:
        new = page.form(KeyCreate)
        key, secret, signing_secret = await page.svc.publishers.create_key(publisher_id, new)
        shown = _secret(page, key, secret, signing_secret)
        return await _publisher(page, publisher_id, secret=shown)

    return await _on_publisher(page, "add_key", add)


def _secret(page: Page, key: Key, secret: str, signing_secret: str | None = None) -> Secret:
    url = example_url(public_base(page.svc, page.request), secret, URL_CALLER)
    return Secret(key, secret, url, signing_secret)


# -- a key's actions -------------------------------------------------------------------------


async def _on_key(page: Page, action: Callable[[Key], Awaitable[Response]]) -> Response:
    """`action` on the key of the path (404 page if there is none); a refusal is its
    publisher's page with the message beside the key."""
    key = await _key(page.svc, path_id(page.request, "key_id"))
    try:
        return await action(key)
    except KeyNotFound:  # revoked meanwhile
        refused = ApiError("key_not_found", f"key {key.id} is revoked: it cannot change")
    except TagSchemaNotFound as exc:  # the form names a schema that is gone
        refused = unknown_schema(exc)
    except ApiError as exc:
        refused = exc
    return await _publisher(page, key.publisher_id, refused=page.refusal(f"key-{key.id}", refused))


def _back(key: Key) -> Response:
    return redirect(f"/console/publishers/{key.publisher_id}#key-{key.id}")


@ROUTES.route("POST", "/console/keys/{key_id}", html=True, form=KeyUpdate, errors=_KEY)
async def update_key(page: Page) -> Response:
    """Change a key (pause or resume it); then back to its publisher's page."""

    async def update(key: Key) -> Response:
        await page.svc.publishers.update_key(key.id, page.form(KeyUpdate))
        return _back(key)

    return await _on_key(page, update)


@ROUTES.route(
    "POST", "/console/keys/{key_id}/tag_schema", html=True, form=KeySchemaChoice, errors=_KEY
)
async def choose_tag_schema(page: Page) -> Response:
    """Set or clear a key's tag schema; then back to its publisher's page."""

    async def choose(key: Key) -> Response:
        chosen = page.form(KeySchemaChoice).tag_schema
        await page.svc.publishers.update_key(key.id, KeyUpdate(tag_schema=chosen))
        return _back(key)

    return await _on_key(page, choose)


@ROUTES.route("POST", "/console/keys/{key_id}/rotate", html=True, form=KeyRotate, errors=_KEY)
async def rotate_key(page: Page) -> Response:
    """Rotate a key: the page shows the new secret and URL, this once; the old secret
    keeps working for the grace period."""

    async def rotate(key: Key) -> Response:
        grace = page.form(KeyRotate).grace_seconds
        rotated, secret = await page.svc.publishers.rotate_key(key.id, grace)
        return await _publisher(page, key.publisher_id, secret=_secret(page, rotated, secret))

    return await _on_key(page, rotate)


@ROUTES.route("GET", "/console/keys/{key_id}/revoke", html=True, errors=_KEY)
async def revoke_form(page: Page) -> Response:
    """The confirmation step of revoking a key."""
    key = await _key(page.svc, path_id(page.request, "key_id"))
    publisher, _ = await _publisher_and_keys(page.svc, key.publisher_id)
    context = {"section": "publishers", "key": key, "publisher": publisher}
    return page.render("revoke.html", context)


@ROUTES.route("POST", "/console/keys/{key_id}/revoke", html=True, errors=_KEY)
async def revoke_key(page: Page) -> Response:
    """Revoke a key (within 1 s); then back to its publisher's page."""

    async def revoke(key: Key) -> Response:
        await page.svc.publishers.revoke_key(key.id)
        return _back(key)

    return await _on_key(page, revoke)


@ROUTES.route("POST", "/console/keys/{key_id}/test", html=True, form=KeyTest, errors=_KEY)
async def test_key(page: Page) -> Response:
    """Send one real postback through a key; the page shows the answer the publisher
    would get."""

    async def test(key: Key) -> Response:
        params = _test_params(page.form(KeyTest))
        client = page.request.client
        status, body = await postbacks.try_key(
            page.svc, key.id, params, client.host if client else None
        )
        indented = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
        tried = Tried(key.id, status, indented, page.posted)
        return await _publisher(page, key.publisher_id, tried=tried)

    return await _on_key(page, test)


def _test_params(test: KeyTest) -> dict[str, str]:
    """A key test's postback parameters: the caller number and each name=value."""
    params: dict[str, str] = {}
    for pair in _TEST_SEPARATORS.split(test.tags):
        name, _, value = pair.partition("=")
        if name.strip():
            params[name.strip()] = value.strip()
    if test.caller_number:
        params["caller_number"] = test.caller_number
    return params
