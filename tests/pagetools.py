"""Helpers for the console's tests: a signed-in session as the server sees it, and what
a page shows (the text of its elements by class, a field's value), read with the
standard library's HTML parser."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
from conftest import ADMIN_TOKEN

from calltags.session import SESSION_COOKIE

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_VOID = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"]
)


class Signed:
    """A signed-in browser: its session cookie and the CSRF token its pages carry."""

    def __init__(self, cookie: str, csrf: str):
        self.cookie = cookie
        self.csrf = csrf

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}

    def form(self, **fields: str) -> dict[str, str]:
        """A form's fields with this session's CSRF token."""
        return {**fields, "csrf_token": self.csrf}


async def sign_in(client: httpx.AsyncClient) -> Signed:
    signed = await client.post("/console/login", data={"token": ADMIN_TOKEN})
    assert signed.status_code == 303, signed.text
    cookie = signed.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    page = await client.get("/console/publishers", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found is not None
    return Signed(cookie, found.group(1))


class _Texts(HTMLParser):
    """The text of each element with class `css_class`, optionally only inside an
    element whose attribute `inside[0]` is `inside[1]`; and every id's value attribute."""

    def __init__(self, css_class: str, inside: tuple[str, str] | None):
        super().__init__(convert_charrefs=True)
        self.css_class = css_class
        self.inside = inside
        self.stack: list[tuple[str, int | None, bool]] = []  # (tag, its found index, scope)
        self.found: list[list[str]] = []
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {name: value or "" for name, value in attrs}
        if "id" in named and "value" in named:
            self.values[named["id"]] = named["value"]
        if tag in _VOID:
            return
        scope = self.inside is not None and named.get(self.inside[0]) == self.inside[1]
        in_scope = self.inside is None or scope or any(s for _, _, s in self.stack)
        index = None
        if in_scope and self.css_class in named.get("class", "").split():
            index = len(self.found)
            self.found.append([])
        self.stack.append((tag, index, scope))

    def handle_endtag(self, tag: str) -> None:
        if any(open_tag == tag for open_tag, _, _ in self.stack):
            while self.stack and self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        for _, index, _ in self.stack:
            if index is not None:
                self.found[index].append(data)


def texts(html: str, css_class: str, inside: tuple[str, str] | None = None) -> list[str]:
    """The text of every element of class `css_class` (whitespace collapsed), in order;
    `inside` = (attribute, value): only within the element that has it."""
    parser = _Texts(css_class, inside)
    parser.feed(html)
    return [" ".join("".join(parts).split()) for parts in parser.found]


def value(html: str, element_id: str) -> str:
    """The value attribute of the element with this id."""
    parser = _Texts("", None)
    parser.feed(html)
    return parser.values[element_id]
