"""The route table's entry: one operation of one API, as the APIs dispatch it and the
OpenAPI document describes it. Each API module lists its own operations; nothing else
names a route."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from msgspec import Struct


class Api(Enum):
    """Which app of the front serves an operation (and its metrics label)."""

    PUBLISHER = "publisher"
    ROUTING = "routing"
    ADMIN = "admin"
    FRONT = "front"  # /healthz, served by the front in every process


class Auth(Enum):
    NONE = "none"
    ROUTING = "routing"  # Bearer CALLTAGS_ROUTING_TOKEN or CALLTAGS_ADMIN_TOKEN
    ADMIN = "admin"  # Bearer CALLTAGS_ADMIN_TOKEN
    SESSION = "session"  # a console page: the sign-in cookie (or the admin Bearer token)


@dataclass(frozen=True)
class Operation:
    api: Api
    method: str
    path: str  # with {name} parameters, as Starlette writes them
    summary: str
    handler: Callable[..., Any]
    auth: Auth = Auth.NONE
    body: type[Struct] | None = None  # the JSON request body's model
    query: type[Struct] | None = None  # the query string's model
    form: type[Struct] | None = None  # a console form's model (url-encoded body)
    status: int = 200
    response: type[Struct] | None = None  # None: see `html` / `redirect`
    # Other answers than `status` that succeed, e.g. {200: Call} beside a 201.
    also: Mapping[int, type[Struct]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # codes of the error table it may answer
    html: bool = False  # answers a server-rendered page
    redirect: bool = False  # answers 303
    # The media type of an answer the handler makes itself (neither JSON of `response`,
    # nor a page, nor a redirect), e.g. Prometheus text.
    media: str | None = None
    doc: Mapping[str, Any] = field(default_factory=dict)  # more of the OpenAPI operation

    @property
    def endpoint(self) -> bool:
        """The handler is a Starlette endpoint: it takes the request, answers itself."""
        return self.html or self.redirect or self.media is not None

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1].split(":")[0] for part in self.path.split("/") if part.startswith("{")]


F = TypeVar("F", bound=Callable[..., Any])


class Routes:
    """The operations of one API, in the order they are declared: each handler is
    declared with its route by the decorator `route`; the first line of the handler's
    docstring is the operation's summary."""

    def __init__(self, api: Api, auth: Auth = Auth.NONE):
        self.api = api
        self.auth = auth
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, **fields: Any) -> Callable[[F], F]:
        """Declare the handler's operation. Its models come from the handler's
        annotations unless given: the `body` and `query` parameters, and the returned
        Struct (or the Struct of a returned (status, Struct))."""

        def declare(handler: F) -> F:
            hints = typing.get_type_hints(handler)
            for name in ("body", "query"):
                if name in hints:
                    fields.setdefault(name, hints[name])
            returned = hints.get("return")
            if typing.get_origin(returned) is tuple:
                returned = typing.get_args(returned)[-1]
            if isinstance(returned, type) and issubclass(returned, Struct):
                fields.setdefault("response", returned)
            fields.setdefault("auth", self.auth)
            summary = (handler.__doc__ or handler.__name__).strip().split("\n")[0]
            self.operations.append(Operation(self.api, method, path, summary, handler, **fields))
            return handler

        return declare
