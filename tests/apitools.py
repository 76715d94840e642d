"""Helpers the API tests share: the routing calls that must succeed, the error shape,
and the admin routes every token check walks through."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import ROUTING

ADMIN_ROUTES = [
    ("POST", "/admin/publishers"),
    ("GET", "/admin/publishers"),
    ("PATCH", "/admin/publishers/1"),
    ("POST", "/admin/publishers/1/keys"),
    ("GET", "/admin/publishers/1/keys"),
    ("PATCH", "/admin/keys/1"),
    ("DELETE", "/admin/keys/1"),
]


def admin_body(method: str) -> dict[str, str] | None:
    """A body for an admin route, so that only the token decides the answer."""
    return {"name": "x"} if method in ("POST", "PATCH") else None


def _ok(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def connect(
    client: httpx.AsyncClient, caller: str, call_uuid: str | None = None
) -> dict[str, Any]:
    """The call a connect that must create one answers (201)."""
    payload = {"caller_number": caller}
    if call_uuid is not None:
        payload["call_uuid"] = call_uuid
    return _ok(await client.post("/calls", json=payload, headers=ROUTING), 201)


async def end(client: httpx.AsyncClient, call_uuid: str) -> dict[str, Any]:
    return _ok(await client.post(f"/calls/{call_uuid}/end", headers=ROUTING), 200)


async def get_call(client: httpx.AsyncClient, call_uuid: str) -> dict[str, Any]:
    return _ok(await client.get(f"/calls/{call_uuid}", headers=ROUTING), 200)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is `{"error": code, "message": text}` with this status; the text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    message: str = body["message"]
    return message
