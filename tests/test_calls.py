"""The routing API: POST /calls, GET /calls/{call_uuid}, POST /calls/{call_uuid}/end."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from apitools import ADMIN_ROUTES, admin_body, assert_error
from conftest import ADMIN, ROUTING, fresh_caller

CALL_FIELDS = {"call_uuid", "caller_number", "state", "tags", "tag_sources", "started_at"}


def epoch(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


async def start(
    client: httpx.AsyncClient, caller: str, **fields: Any
) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/calls", json={"caller_number": caller, **fields}, headers=ROUTING
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def test_connect_returns_the_new_call(client: httpx.AsyncClient) -> None:
    caller = fresh_caller()
    call_uuid = f"routing-{uuid.uuid4()}"
    before = time.time()
    response = await client.post(
        "/calls",
        json={
            "caller_number": f"({caller[2:5]}) {caller[5:8]}-{caller[8:]}",
            "call_uuid": call_uuid,
            "publisher_id": "pub-17",
            "campaign": "auto insurance",
        },
        headers=ROUTING,
    )
    after = time.time()
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= CALL_FIELDS
    assert "ended_at" not in body
    assert body["call_uuid"] == call_uuid
    assert body["caller_number"] == caller
    assert body["state"] == "in_progress"
    assert body["tags"] == {}
    assert body["tag_sources"] == {}
    assert before - 1 <= epoch(body["started_at"]) <= after + 1
    assert body["publisher_id"] == "pub-17"
    assert body["campaign"] == "auto insurance"


async def test_connect_generates_a_call_uuid(client: httpx.AsyncClient) -> None:
    status, first = await start(client, fresh_caller())
    assert status == 201
    assert uuid.UUID(first["call_uuid"])
    _, second = await start(client, fresh_caller())
    assert second["call_uuid"] != first["call_uuid"]


async def test_connect_again_with_the_same_call_uuid_is_the_same_call(
    client: httpx.AsyncClient,
) -> None:
    caller = fresh_caller()
    status, first = await start(client, caller)
    assert status == 201
    status, again = await start(client, caller, call_uuid=first["call_uuid"])
    assert status == 200
    assert again == first
    # Any format of the same number is the same caller.
    status, again = await start(client, caller[2:], call_uuid=first["call_uuid"])
    assert status == 200
    assert again == first


async def test_call_uuid_of_another_caller_is_409(client: httpx.AsyncClient) -> None:
    _, call = await start(client, fresh_caller())
    response = await client.post(
        "/calls",
        json={"caller_number": fresh_caller(), "call_uuid": call["call_uuid"]},
        headers=ROUTING,
    )
    assert_error(response, 409, "call_exists")


async def test_get_call(client: httpx.AsyncClient) -> None:
    _, call = await start(client, fresh_caller())
    response = await client.get(f"/calls/{call['call_uuid']}", headers=ROUTING)
    assert response.status_code == 200, response.text
    assert response.json() == call


async def test_unknown_call_is_404(client: httpx.AsyncClient) -> None:
    unknown = f"missing-{uuid.uuid4()}"
    assert_error(await client.get(f"/calls/{unknown}", headers=ROUTING), 404, "call_not_found")
    response = await client.post(f"/calls/{unknown}/end", headers=ROUTING)
    assert_error(response, 404, "call_not_found")
    response = await client.get("/calls/%20weird%7Bname%7D", headers=ROUTING)
    assert_error(response, 404, "call_not_found")


async def test_end_call(client: httpx.AsyncClient) -> None:
    _, call = await start(client, fresh_caller())
    before = time.time()
    response = await client.post(f"/calls/{call['call_uuid']}/end", headers=ROUTING)
    after = time.time()
    assert response.status_code == 200, response.text
    ended = response.json()
    assert ended["state"] == "completed"
    assert before - 1 <= epoch(ended["ended_at"]) <= after + 1
    assert {k: v for k, v in ended.items() if k not in ("state", "ended_at")} == {
        k: v for k, v in call.items() if k != "state"
    }

    # Ending twice is harmless: the same completed call, the same end time.
    response = await client.post(f"/calls/{call['call_uuid']}/end", headers=ROUTING)
    assert response.status_code == 200, response.text
    assert response.json() == ended
    response = await client.get(f"/calls/{call['call_uuid']}", headers=ROUTING)
    assert response.json() == ended

    # Connecting again with the ended call's uuid gives back that call, unchanged.
    response = await client.post(
        "/calls",
        json={"caller_number": call["caller_number"], "call_uuid": call["call_uuid"]},
        headers=ROUTING,
    )
    assert response.status_code == 200, response.text
    assert response.json() == ended


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({}, 422, "missing_caller"),
        ({"caller_number": ""}, 422, "missing_caller"),
        ({"caller_number": "not a number"}, 422, "invalid_caller_number"),
        ({"caller_number": ["+12125550100"]}, 422, "invalid_caller_number"),
        ({"caller_number": True}, 422, "invalid_caller_number"),
        ({"caller_number": "+12125550100", "call_uuid": "has spaces"}, 422, "invalid_request"),
        ({"caller_number": "+12125550100", "call_uuid": "x" * 129}, 422, "invalid_request"),
        ({"caller_number": "+12125550100", "call_uuid": {"a": 1}}, 422, "invalid_request"),
        ({"caller_number": "+12125550100", "campaign": "c" * 201}, 422, "invalid_request"),
        ({"caller_number": "+12125550100", "publisher_id": [1]}, 422, "invalid_request"),
    ],
)
async def test_connect_validation(
    client: httpx.AsyncClient, payload: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post("/calls", json=payload, headers=ROUTING)
    assert_error(response, status, code)


@pytest.mark.parametrize(
    "content", [b"{", b"[]", b'"caller"', b"\xff"], ids=["truncated", "array", "string", "binary"]
)
async def test_connect_invalid_body(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        "/calls", content=content, headers={**ROUTING, "content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_body")


async def test_connect_body_too_large(client: httpx.AsyncClient) -> None:
    body = b'{"caller_number": "+12125550100", "campaign": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.post(
        "/calls", content=body, headers={**ROUTING, "content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")


ROUTES = [
    ("POST", "/calls"),
    ("GET", "/calls/some-call"),
    ("POST", "/calls/some-call/end"),
]
BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "Bearer "},
    {"Authorization": "test-routing-token"},
    {"Authorization": "Basic dGVzdC1yb3V0aW5nLXRva2Vu"},
    {"Authorization": ROUTING["Authorization"] + "x"},
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_routing_requires_a_token(client: httpx.AsyncClient, method: str, path: str) -> None:
    for headers in BAD_AUTH:
        response = await client.request(
            method, path, json={"caller_number": fresh_caller()}, headers=headers
        )
        assert_error(response, 401, "unauthorized")


async def test_admin_token_works_for_routing(client: httpx.AsyncClient) -> None:
    response = await client.post("/calls", json={"caller_number": fresh_caller()}, headers=ADMIN)
    assert response.status_code == 201, response.text
    call_uuid = response.json()["call_uuid"]
    response = await client.get(f"/calls/{call_uuid}", headers=ADMIN)
    assert response.status_code == 200, response.text
    response = await client.post(f"/calls/{call_uuid}/end", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "completed"


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_routing_token_does_not_open_admin_routes(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = admin_body(method)
    response = await client.request(method, path, json=body, headers=ROUTING)
    assert_error(response, 401, "unauthorized")
