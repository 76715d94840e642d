"""The baseline for `make bench`: a hello-world Starlette endpoint, served exactly like calltags."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def hello(request: Request) -> Response:
    return Response(b'{"hello":"world"}', media_type="application/json")


app = Starlette(routes=[Route("/", hello), Route("/data_writing", hello)])
