"""Serving the console's pages: the Jinja2 templates (autoescape on, StrictUndefined),
`render`, the one function that answers a page (its security headers, a nonce for its
few lines of script, Retry-After on a 503), and `endpoint`, which serves every console
operation (`Auth.SESSION`) the same way:

- nobody signed in: 303 to the sign-in page, which leads back here afterwards;
- a POST: its form read, and its CSRF token checked (403 page without it);
- the handler gets a `Page` and answers it; an ApiError it raises is a page with that
  error's status and message, a store outage the 503 page (never a 500).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote, urlencode

import jinja2
from msgspec import Struct
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from calltags import forms, session
from calltags.errors import RETRY_AFTER_SECONDS, ApiError, StoreUnavailable
from calltags.http import query_values, read_body
from calltags.models import convert
from calltags.operations import Operation
from calltags.services import Services, services

log = logging.getLogger("calltags")

LOGIN_PATH = "/console/login"
HOME_PATH = "/console/publishers"
NAVIGATION = (  # the console's sections: (name, path, label)
    ("publishers", HOME_PATH, "Publishers"),
    ("log", "/console/log", "Postback log"),
    ("calls", "/console/calls", "Calls"),
    ("callers", "/console/callers", "Callers"),
    ("tag_schemas", "/console/tag_schemas", "Tag schemas"),
    ("webhooks", "/console/webhooks", "Webhooks"),
)
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",  # a page may show a secret once: never kept, never replayed
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_UNITS = ((86_400, "d"), (3600, "h"), (60, "min"))

T = TypeVar("T", bound=Struct)
PageHandler = Callable[["Page"], Awaitable[Response]]


def duration(seconds: int) -> str:
    """Seconds as a person reads them: 86400 -> "1 d", 90 -> "90 s"."""
    for size, unit in _UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def input_time(value: str) -> str:
    """An ISO 8601 UTC time as a datetime-local field shows it (no zone: UTC is said)."""
    return value.removesuffix("Z").removesuffix("+00:00")


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("calltags", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters.update(duration=duration, input_time=input_time)
templates = Jinja2Templates(env=_env)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """The page `name` as the answer: no-store, no framing, no script but its own."""
    nonce = secrets.token_urlsafe(16)
    headers = {**_HEADERS, "Content-Security-Policy": _CSP.format(nonce=nonce)}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    context = {"nonce": nonce, "navigation": NAVIGATION, "section": None, "csrf": "", **context}
    return templates.TemplateResponse(request, name, context, status_code=status, headers=headers)


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def login_url(request: Request) -> str:
    """The sign-in page, leading back to this page (a GET's) once signed in."""
    if request.method != "GET":
        return LOGIN_PATH
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{LOGIN_PATH}?next={quote(here, safe='')}"


def safe_next(value: str | None) -> str:
    """Where a sign-in leads: a console page named by `value`, else the console's home."""
    if value and value.startswith("/console") and not value.startswith(("//", "/\\")):
        return value
    return HOME_PATH


@dataclass(frozen=True)
class Refusal:
    """A form refused: which one, why (the model's message), and what was typed."""

    form: str
    message: str
    status: int
    values: dict[str, str]


@dataclass
class Page:
    """A console request being answered: who asked, what they posted, and the answer."""

    request: Request
    svc: Services
    op: Operation
    viewer: session.Viewer
    posted: dict[str, str] = field(default_factory=dict)  # a POST's form, less its token

    def form(self, model: type[T]) -> T:
        """The posted form as its operation's model, or ApiError 422 `invalid_request`."""
        assert model is self.op.form, (model, self.op.path)
        return forms.read(self.posted, model)

    def given(self, model: type[Struct]) -> dict[str, str]:
        """The query string's fields that `model` knows (given a value)."""
        known = frozenset(model.__struct_fields__)
        return {name: value for name, value in query_values(self.request).items() if name in known}

    def query(self, model: type[T], **defaults: str) -> T:
        """The query string as its operation's model, `defaults` for fields not given;
        ApiError 422 `invalid_request`."""
        assert model is self.op.query, (model, self.op.path)
        return convert({**defaults, **self.given(model)}, model)

    def refusal(self, form: str, exc: ApiError) -> Refusal:
        return Refusal(form, exc.message, exc.status, self.posted)

    def render(self, name: str, context: dict[str, Any], status: int = 200) -> Response:
        return render(self.request, name, {"csrf": self.viewer.csrf, **context}, status)


class Paged(Protocol):
    """A page of records as `records` reads them."""

    @property
    def items(self) -> Sequence[Any]: ...

    @property
    def next_cursor(self) -> str | None: ...


@dataclass(frozen=True)
class Listing(Generic[T]):
    """A listing page's records: the filters as given, as the model (None: refused),
    the items, and what the page shows around them (paging links, a refused filter's
    message)."""

    query: T | None
    items: Sequence[Any]
    context: dict[str, Any]
    status: int


PAGE_LIMIT = 50  # entries a console listing shows unless the URL asks otherwise


async def listing(
    page: Page, model: type[T], read: Callable[[T, str], Awaitable[Paged]]
) -> Listing[T]:
    """The listing the page's query asks for, as `read(query, default region)` reads
    it, PAGE_LIMIT a page unless the query says otherwise; a refused filter is said on
    the page, the filters kept."""
    path = page.request.url.path
    given = page.given(model)
    first = {name: value for name, value in given.items() if name != "cursor"}
    context: dict[str, Any] = {
        "filters": given,
        "message": None,
        "next_url": None,
        "newest_url": f"{path}?{urlencode(first)}",
        "first_page": "cursor" not in given,
    }
    try:
        query = page.query(model, limit=str(PAGE_LIMIT))
        found = await read(query, page.svc.settings.default_region)
    except ApiError as exc:
        return Listing(None, [], {**context, "message": exc.message}, exc.status)
    if found.next_cursor is not None:
        context["next_url"] = f"{path}?{urlencode({**first, 'cursor': found.next_cursor})}"
    return Listing(query, found.items, context, 200)


def error_page(request: Request, status: int, title: str, message: str, csrf: str = "") -> Response:
    context = {"title": title, "message": message, "csrf": csrf}
    return render(request, "error.html", context, status)


def endpoint(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of a console operation, whose handler takes a Page."""
    handler: PageHandler = op.handler

    async def serve(request: Request) -> Response:
        svc = services(request)
        viewer = session.viewer(request, svc)
        if viewer is None:
            return redirect(login_url(request))
        try:
            posted: dict[str, str] = {}
            if request.method == "POST":
                posted = forms.fields(await read_body(request))
                if not viewer.accepts(posted.pop(session.CSRF_FIELD, None)):
                    return error_page(
                        request,
                        403,
                        "Form refused",
                        "This form does not carry the token of your session (it was sent"
                        " from elsewhere, or from a page older than your sign-in). Reload"
                        " the page and send it again.",
                        viewer.csrf,
                    )
            return await handler(Page(request, svc, op, viewer, posted))
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            message = "A store (Postgres or Redis) is unavailable; retry once it is back."
            return error_page(request, 503, "Unavailable", message, viewer.csrf)
        except ApiError as exc:
            return error_page(
                request, exc.status, exc.code.replace("_", " "), exc.message, viewer.csrf
            )

    return serve
