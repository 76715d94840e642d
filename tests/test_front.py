"""The front layer: one path per request, every error the JSON of one function (404, 405
and bugs included), unknown fields and filters refused, every 503 with Retry-After
(Postgres cut off by a proxy), and the metrics of each API."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from apitools import assert_error
from conftest import ADMIN, ROUTING, Keys, fresh_caller
from logtools import PgProxy

from calltags.app import create_app, create_routing_app
from calltags.config import Settings
from calltags.errors import ERRORS, LOGGED_CODES
from calltags.front import OPERATIONS, Front
from calltags.operations import Api, Auth


@contextlib.asynccontextmanager
async def serving(app: Front) -> AsyncIterator[httpx.AsyncClient]:
    async with app.running():
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug")


async def test_a_bug_on_every_api_is_a_json_500(settings: Settings, keys: Keys) -> None:
    key = await keys.key()
    app = create_app(settings)
    async with serving(app) as client:
        core = app.core
        assert core is not None
        core.store.get_call = _broken  # type: ignore[method-assign]
        core.store.write_batch = _broken  # type: ignore[method-assign]
        core.publishers.list_publishers = _broken  # type: ignore[attr-defined]
        answers = [
            await client.get("/calls/some-call", headers=ROUTING),
            await client.get(
                "/data_writing",
                params={"key": key["key"], "caller_number": fresh_caller(), "a": "1"},
            ),
            await client.get("/admin/publishers", headers=ADMIN),
        ]
        for response in answers:
            assert_error(response, 500, "internal_error")
        # The console's pages render their own errors, but a bug there is the same JSON 500.
        app.admin.app.state.services = None  # type: ignore[union-attr]
        assert_error(await client.get("/console/log", headers=ADMIN), 500, "internal_error")


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "allow"),
    [
        ("GET", "/nowhere", 404, "not_found", None),
        ("GET", "/admin/publishers/1/x", 404, "not_found", None),
        ("GET", "/admin/publishers/1", 405, "method_not_allowed", "PATCH"),
        ("GET", "/data_writing/a/b", 404, "not_found", None),
        ("GET", "/calls/a/b/c", 404, "not_found", None),
        ("PUT", "/data_writing", 405, "method_not_allowed", "GET, POST, OPTIONS"),
        ("DELETE", "/calls", 405, "method_not_allowed", "POST"),
        ("POST", "/calls/c-1", 405, "method_not_allowed", "GET"),
        ("PUT", "/admin/publishers", 405, "method_not_allowed", "GET, HEAD, POST"),
        ("POST", "/healthz", 405, "method_not_allowed", "GET"),
    ],
)
async def test_unknown_routes_and_methods_are_json(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str, allow: str | None
) -> None:
    response = await client.request(method, path, headers=ADMIN)
    assert_error(response, status, code)
    if allow is not None:
        assert sorted(response.headers["allow"].split(", ")) == sorted(allow.split(", "))


async def test_the_routing_process_serves_routing_alone(settings: Settings) -> None:
    app = create_routing_app(replace(settings, database_url=None))  # it needs no Postgres
    async with serving(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        caller = fresh_caller()
        response = await client.post("/calls", json={"caller_number": caller}, headers=ROUTING)
        assert response.status_code == 201, response.text
        for path in ("/admin/publishers", "/data_writing", "/openapi.json", "/metrics", "/"):
            assert_error(await client.get(path, headers=ADMIN), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PATCH", "/admin/keys/{key_id}", {"pause": True}, "pause"),
        ("POST", "/admin/publishers", {"name": "x", "colour": "blue"}, "colour"),
        ("POST", "/admin/publishers/{publisher_id}/keys", {"name": "k", "cutoff": 5}, "cutoff"),
        ("POST", "/admin/keys/{key_id}/rotate", {"grace": 5}, "grace"),
        ("POST", "/calls", {"caller_number": fresh_caller(), "campain": "x"}, "campain"),
    ],
)
async def test_unknown_fields_are_422(
    client: httpx.AsyncClient,
    key: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    path = path.format(key_id=key["id"], publisher_id=key["publisher_id"])
    headers = ROUTING if path == "/calls" else ADMIN
    response = await client.request(method, path, json=body, headers=headers)
    assert field in assert_error(response, 422, "invalid_request")
    listed = await client.get(f"/admin/publishers/{key['publisher_id']}/keys", headers=ADMIN)
    (unchanged,) = listed.json()["items"]
    assert unchanged["paused"] is False


@pytest.mark.parametrize("params", [{"status": "zz"}, {"state": "ringing"}, {"limit": "0"}])
async def test_unknown_filter_values_are_422(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    path = "/admin/calls" if "state" in params else "/admin/postbacks"
    assert_error(await client.get(path, params=params, headers=ADMIN), 422, "invalid_request")


async def test_every_logged_error_code_is_a_status_filter(client: httpx.AsyncClient) -> None:
    page = await client.get("/console/log", headers=ADMIN)
    assert page.status_code == 200, page.text
    offered = set(re.findall(r'<option value="([^"]+)"', page.text))
    assert set(LOGGED_CODES) <= offered
    for code in ("unsupported_media_type", "missing_signature", "address_not_allowed"):
        assert code in offered
        response = await client.get("/admin/postbacks", params={"status": code}, headers=ADMIN)
        assert response.status_code == 200, response.text


async def test_openapi_lists_each_operations_errors_from_the_table(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    patch = spec["paths"]["/admin/keys/{key_id}"]["patch"]
    codes = patch["responses"]["404"]["content"]["application/json"]["schema"]
    assert codes["properties"]["error"]["enum"] == ["key_not_found"]
    assert "503" in patch["responses"] and "422" in patch["responses"]
    burst = spec["components"]["schemas"]["KeyUpdate"]["properties"]["rate_limit_burst"]
    assert any(option.get("maximum") for option in burst["anyOf"])
    statuses = spec["paths"]["/admin/postbacks"]["get"]["parameters"]
    (status,) = [param for param in statuses if param["name"] == "status"]
    assert set(LOGGED_CODES) <= set(status["schema"]["anyOf"][0]["enum"])
    for path, path_item in spec["paths"].items():
        for operation in path_item.values():
            for status_code, response in operation["responses"].items():
                if int(status_code) < 400 or "text/html" in response["content"]:
                    continue  # a page saying the error (the console's)
                schema = response["content"]["application/json"]["schema"]
                if path == "/readyz" and status_code == "503":  # the readiness answer
                    continue
                enum = schema["properties"]["error"]["enum"]
                assert all(ERRORS[code].status == int(status_code) for code in enum), path


# Admin routes that need no Postgres (Redis alone, or the caller search form, no store):
# they go on through a Postgres outage.
_REDIS_ONLY = {
    ("GET", "/admin/callers/{number}"),
    ("DELETE", "/admin/callers/{number}/pending"),
    ("GET", "/console/callers"),
}


# Bodies the operation takes, where a name alone is not one.
_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/admin/webhooks"): {
        "name": "x",
        "url": "https://x.example/",
        "events": ["call.ended"],
    },
}


def _concrete(path: str, key: dict[str, Any]) -> str:
    return path.format(
        key_id=key["id"],
        publisher_id=key["publisher_id"],
        call_uuid="c-1",
        name="x",
        number="+12125550100",
        webhook_id=1,
    )


async def test_a_postgres_outage_is_503_with_retry_after_on_every_admin_route(
    settings: Settings, keys: Keys, database_url: str
) -> None:
    key = await keys.key()
    proxy = PgProxy(database_url)
    await proxy.start()
    app = create_app(replace(settings, database_url=proxy.dsn))
    try:
        async with serving(app) as client:
            caller = fresh_caller()
            params = {"key": key["key"], "caller_number": caller, "a": "1"}
            assert (await client.get("/data_writing", params=params)).status_code == 200
            await proxy.stop()  # Postgres unreachable from here on
            touching = [  # all but the console's sign-out, which touches no store
                op
                for op in OPERATIONS
                if op.api is Api.ADMIN
                and op.auth in (Auth.ADMIN, Auth.SESSION)
                and not op.redirect
                and (op.method, op.path) not in _REDIS_ONLY
            ]
            assert len(touching) >= 10
            for op in touching:
                body = None
                if op.body is not None:  # a body the operation takes, so only Postgres fails it
                    body = {"name": "x"} if "name" in op.body.__struct_fields__ else {}
                    body = _BODIES.get((op.method, op.path), body)
                response = await client.request(
                    op.method, _concrete(op.path, key), json=body, headers=ADMIN
                )
                assert response.status_code == 503, (op.method, op.path, response.text)
                assert response.headers["retry-after"] == "1", (op.method, op.path)
                if op.html:  # a page saying so, not a 500
                    assert "unavailable" in response.text, (op.method, op.path)
                else:
                    assert_error(response, 503, "unavailable")
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
            # Publishers and routing go on: neither needs Postgres.
            assert (await client.get("/data_writing", params=params)).status_code == 200
            connect = await client.post("/calls", json={"caller_number": caller}, headers=ROUTING)
            assert connect.status_code == 201, connect.text
            assert connect.json()["tags"] == {"a": "1"}
    finally:
        await proxy.stop()


async def test_metrics_count_requests_outcomes_and_latency(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    await client.get("/data_writing", params={"key": key["key"], "caller_number": caller, "a": "1"})
    await client.get("/data_writing", params={"key": key["key"], "caller_number": caller})
    await client.post("/calls", json={"caller_number": caller}, headers=ROUTING)
    await client.get("/admin/publishers", headers=ADMIN)
    text = (await client.get("/metrics")).text
    for line in (
        'calltags_http_requests_total{api="publisher",method="GET",route="/data_writing",status="200"}',
        'calltags_http_requests_total{api="publisher",method="GET",route="/data_writing",status="422"}',
        'calltags_http_requests_total{api="routing",method="POST",route="/calls",status="201"}',
        'calltags_http_requests_total{api="admin",method="GET",route="/admin/publishers",status="200"}',
        'calltags_postback_outcomes_total{outcome="call not found, tags stored"}',
        'calltags_postback_outcomes_total{outcome="no_tags"}',
        'calltags_request_duration_seconds_count{operation="postback"}',
        'calltags_request_duration_seconds_count{operation="connect"}',
        "calltags_log_backlog_entries",
    ):
        assert line in text, line
