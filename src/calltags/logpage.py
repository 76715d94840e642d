"""The account manager's log page: /admin/log, server-rendered, behind the admin token.

/admin/login takes the admin token once and sets a session cookie (Secure, HttpOnly,
SameSite=Strict) holding an expiry and an HMAC keyed from the token, never the token;
changing CALLTAGS_ADMIN_TOKEN ends every session. A Bearer header works too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from calltags.errors import RETRY_AFTER_SECONDS, ApiError, StoreUnavailable
from calltags.http import check_bearer, query_values, read_body
from calltags.models import STATUS_FILTERS, PostbackEntry, PostbackFilters, convert
from calltags.operations import Api, Auth, Routes
from calltags.services import Services, services

SESSION_COOKIE = "calltags_session"
SESSION_SECONDS = 12 * 3600  # 12 h
PAGE_LIMIT = "50"  # entries a page shows unless the URL asks otherwise
LOGIN_BODY_LIMIT = 8192  # bytes of a login form
FILTERS = frozenset(PostbackFilters.__struct_fields__)
ROUTES = Routes(Api.ADMIN)
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("calltags", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)


def _session_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"calltags log page session", hashlib.sha256).digest()


def new_session(token: str, now: float | None = None) -> str:
    """`expires.nonce.signature`: valid until `expires`, for this admin token only."""
    expires = int(time.time() if now is None else now) + SESSION_SECONDS
    payload = f"{expires}.{secrets.token_urlsafe(12)}"
    signature = hmac.new(_session_key(token), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{signature}"


def valid_session(token: str, value: str, now: float | None = None) -> bool:
    payload, _, signature = value.rpartition(".")
    expires, _, _ = payload.partition(".")
    expected = hmac.new(_session_key(token), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return False
    return expires.isdigit() and int(expires) > (time.time() if now is None else now)


def signed_in(request: Request, svc: Services) -> bool:
    """The session cookie is valid, or the request carries the admin Bearer token."""
    token = svc.admin_token()
    if token is None:
        return False
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None and valid_session(token, cookie):
        return True
    if "authorization" in request.headers:
        try:
            check_bearer(request.headers.get("authorization"), (token,))
        except ApiError:
            return False
        return True
    return False


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    headers = _HEADERS
    if status == 503:
        headers = {**_HEADERS, "Retry-After": str(RETRY_AFTER_SECONDS)}
    return templates.TemplateResponse(request, name, context, status_code=status, headers=headers)


@ROUTES.route("GET", "/admin/login", html=True)
async def login_form(request: Request) -> Response:
    """The sign-in page."""
    svc = services(request)
    if signed_in(request, svc):
        return RedirectResponse("/admin/log", status_code=303)
    return _render(request, "login.html", {"message": None})


@ROUTES.route("POST", "/admin/login", redirect=True)
async def login(request: Request) -> Response:
    """Sign in with the admin token (form field `token`): a session cookie."""
    svc = services(request)
    token = svc.admin_token()
    form = dict(parse_qsl((await read_body(request, LOGIN_BODY_LIMIT)).decode("utf-8", "replace")))
    given = form.get("token", "").strip()
    if token is None or not hmac.compare_digest(given.encode(), token.encode()):
        return _render(request, "login.html", {"message": "That token is not valid."}, 401)
    response = RedirectResponse("/admin/log", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        new_session(token),
        max_age=SESSION_SECONDS,
        path="/admin",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


@ROUTES.route("POST", "/admin/logout", redirect=True)
async def logout(request: Request) -> Response:
    """Sign out."""
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/admin", secure=True, httponly=True)
    return response


def _entry_view(entry: PostbackEntry) -> dict[str, Any]:
    item = msgspec.structs.asdict(entry)
    return {
        **item,
        "outcome": entry.status or entry.error or "",
        "accepted": entry.error is None,
        "tag_text": ", ".join(f"{k}={v}" for k, v in entry.tags.items()),
        "payload": orjson.dumps(item, option=orjson.OPT_INDENT_2).decode(),
    }


@ROUTES.route("GET", "/admin/log", auth=Auth.SESSION, query=PostbackFilters, html=True)
async def log_page(request: Request) -> Response:
    """The postback log page (signed in; else to the sign-in page)."""
    svc = services(request)
    if not signed_in(request, svc):
        return RedirectResponse("/admin/login", status_code=303)
    filters = {name: value for name, value in query_values(request).items() if name in FILTERS}
    entries: list[dict[str, Any]] = []
    next_url = None
    message = None
    status = 200
    try:
        query = convert({"limit": PAGE_LIMIT, **filters}, PostbackFilters)
        page = await svc.records.postbacks(query, svc.settings.default_region)
        entries = [_entry_view(item) for item in page.items]
        if page.next_cursor is not None:
            next_url = "/admin/log?" + urlencode({**filters, "cursor": page.next_cursor})
    except ApiError as exc:
        message, status = exc.message, exc.status
    except StoreUnavailable:
        error = ApiError("unavailable", "Postgres is unavailable, retry shortly")
        message, status = error.message, error.status
    try:
        publishers = await svc.publishers.list_publishers()
    except StoreUnavailable:
        publishers = []  # the publisher filter is then a bare id field
    backlog = svc.log.last
    context = {
        "entries": entries,
        "filters": filters,
        "next_url": next_url,
        "first_page": "cursor" not in filters,
        "newest_url": "/admin/log?"
        + urlencode({k: v for k, v in filters.items() if k != "cursor"}),
        "message": message,
        "publishers": publishers,
        "statuses": STATUS_FILTERS,
        "backlog": backlog.total,
        "lag_seconds": round(backlog.oldest_age_seconds(), 1),
    }
    return _render(request, "log.html", context, status)
