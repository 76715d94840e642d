"""Outbound webhooks against real Redis, Postgres and a real HTTP receiver: each event's
delivery (body, URL tokens, headers, signature), filters, retries with one delivery id,
the outbox's idempotence, refused addresses, self-disabling, and the admin API.

The flush (a Sink with the outbox) and the attempts (a Courier) run in the test's
process; their scheduling is a task here instead of an arq job (test_webhook_worker.py
runs the real worker)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import asyncpg
import httpx
import orjson
import pytest
from apitools import assert_error, end
from conftest import ADMIN, ROUTING, Keys, fresh_caller, running_app
from logtools import entry, fill, keyspace, open_sink, own_prefix
from pagetools import sign_in, texts, value
from prometheus_client import CollectorRegistry, generate_latest
from receiver import Receiver
from redis.asyncio import Redis
from test_cli import Cli, leading_json

from calltags.config import Settings, load_settings
from calltags.delivery import Courier, Sender
from calltags.errors import ConfigError
from calltags.outbox import Outbox
from calltags.sink import Sink
from calltags.webhookapi import DELIVERY_BUCKETS, DeliveryStats
from calltags.webhooks import USER_AGENT
from calltags.webhookstore import WebhookStore

EVENTS = ["call.connected", "call.tags_applied", "call.ended", "tags.stored"]


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """The receiver's check, as the README shows it."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(signature, "v1=" + expected.hexdigest())


@dataclass
class Hooks:
    """The flush with its outbox and the attempts, in this process."""

    client: httpx.AsyncClient
    sink: Sink
    courier: Courier
    receiver: Receiver
    made: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def webhook(self, path: str = "/hook", **fields: Any) -> dict[str, Any]:
        body = {"name": "buyer", "url": self.receiver.url + path, "events": EVENTS, **fields}
        response = await self.client.post("/admin/webhooks", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def flush(self) -> list[str]:
        """Move what the API logged into Postgres; the deliveries it made."""
        self.made.clear()
        self.sink.outbox._loaded_at = -1e9  # type: ignore[union-attr]  # webhooks just made
        await self.sink.drain()
        return list(self.made)

    async def deliver(self) -> list[str]:
        """Flush, then one attempt of each new delivery; the states after."""
        made = await self.flush()
        return await self.courier.attempt(made) if made else []

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait for the scheduled attempts (and those they schedule)."""
        deadline = time.monotonic() + timeout
        while any(not t.done() for t in self.tasks):
            assert time.monotonic() < deadline, "attempts still scheduled"
            await asyncio.sleep(0.02)


async def _clear_webhooks(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM webhooks")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def mine(settings: Settings) -> Settings:
    return replace(
        own_prefix(settings, "wh"),
        webhook_allow_private=True,
        webhook_retry_base_seconds=0.05,
        webhook_max_attempts=5,
        webhook_timeout_seconds=2.0,
    )


@pytest.fixture(scope="module")
async def app(mine: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(mine) as client:
        yield client


@pytest.fixture(scope="module")
async def key(app: httpx.AsyncClient) -> dict[str, Any]:
    return await Keys(app).key()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


def _hooks(
    settings: Settings, app: httpx.AsyncClient, sink: Sink, pool: asyncpg.Pool, receiver: Receiver
) -> Hooks:
    hooks: Hooks

    async def notify(ids: list[str]) -> None:
        hooks.made.extend(ids)

    async def schedule(delivery_id: str, attempt: int, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await hooks.courier.attempt([delivery_id])

        hooks.tasks.append(asyncio.create_task(later()))

    sink.outbox = Outbox(pool, notify)
    courier = Courier(
        WebhookStore(pool),
        Sender(settings.webhook_timeout_seconds, settings.webhook_allow_private),
        schedule,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        max_attempts=settings.webhook_max_attempts,
        disable_after=settings.webhook_disable_after,
    )
    hooks = Hooks(app, sink, courier, receiver)
    return hooks


@pytest.fixture
async def hooks(
    mine: Settings, app: httpx.AsyncClient, redis: Redis, receiver: Receiver
) -> AsyncIterator[Hooks]:
    assert mine.database_url is not None
    await _clear_webhooks(mine.database_url)
    async with open_sink(mine, redis) as sink:
        found = _hooks(mine, app, sink, sink.pool, receiver)
        await sink.drain()  # what earlier tests left
        try:
            yield found
        finally:
            for task in found.tasks:
                task.cancel()
            await found.courier.sender.close()
            await _clear_webhooks(mine.database_url)


async def postback(
    client: httpx.AsyncClient, key: dict[str, Any], caller: str, **tags: str
) -> dict[str, Any]:
    params = {"key": key["key"], "caller_number": caller, **tags}
    response = await client.get("/data_writing", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def start_call(client: httpx.AsyncClient, caller: str, **fields: str) -> dict[str, Any]:
    response = await client.post(
        "/calls", json={"caller_number": caller, **fields}, headers=ROUTING
    )
    assert response.status_code == 201, response.text
    call: dict[str, Any] = response.json()
    return call


def bodies(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """The JSON bodies received, by event."""
    return {r.headers["x-calltags-event"]: orjson.loads(r.body) for r in receiver.requests}


# -- each event, delivered ------------------------------------------------------------------


async def test_each_event_is_delivered_with_its_body_and_a_valid_signature(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    webhook = await hooks.webhook()
    caller = fresh_caller()
    await postback(hooks.client, key, caller, zip="10001")  # no call yet: stored
    assert await hooks.deliver() == ["delivered"]
    call = await start_call(hooks.client, caller, publisher_id="77", campaign="roofing")
    assert await hooks.deliver() == ["delivered"]
    await postback(hooks.client, key, caller, qualified="yes")
    assert await hooks.deliver() == ["delivered"]
    await end(hooks.client, call["call_uuid"])
    assert await hooks.deliver() == ["delivered"]

    got = bodies(hooks.receiver)
    assert set(got) == set(EVENTS)
    stored = got["tags.stored"]
    assert "call" not in stored
    assert stored["caller_number"] == caller
    assert stored["tags"] == {"zip": "10001"}
    assert stored["tag_sources"]["zip"]["key_id"] == key["id"]
    connected = got["call.connected"]
    assert connected["call"]["call_uuid"] == call["call_uuid"]
    assert connected["call"]["campaign"] == "roofing"
    assert connected["call"]["state"] == "in_progress"
    assert connected["tags"] == {"zip": "10001"}  # the tags the connect claimed
    applied = got["call.tags_applied"]
    assert applied["tags"] == {"qualified": "yes"}
    assert applied["tag_sources"]["qualified"]["publisher_id"] == key["publisher_id"]
    assert applied["call"]["tags"] == {"zip": "10001", "qualified": "yes"}
    ended = got["call.ended"]
    assert ended["call"]["state"] == "completed"
    assert ended["tags"] == {"zip": "10001", "qualified": "yes"}
    assert "ended_at" in ended["call"]

    for request in hooks.receiver.requests:
        assert request.method == "POST"
        assert request.target == "/hook"
        headers = request.headers
        assert headers["user-agent"] == USER_AGENT
        assert headers["content-type"] == "application/json"
        assert headers["x-calltags-delivery"] == orjson.loads(request.body)["delivery_id"]
        assert abs(int(headers["x-calltags-timestamp"]) - time.time()) < 60
        assert verify(
            webhook["secret"],
            headers["x-calltags-timestamp"],
            request.body,
            headers["x-calltags-signature"],
        )
        assert not verify("whsec_other", headers["x-calltags-timestamp"], request.body,
                          headers["x-calltags-signature"])  # fmt: skip

    listed = await hooks.client.get(f"/admin/webhooks/{webhook['id']}/deliveries", headers=ADMIN)
    items = listed.json()["items"]
    assert len(items) == 4
    assert {i["state"] for i in items} == {"delivered"}
    assert all(i["attempts"] == 1 and i["last_status"] == 200 for i in items)
    assert items[0]["event"] == "call.ended"  # newest first


async def test_a_get_webhook_sends_its_url_with_the_tokens_replaced(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    template = (
        "/pixel?e=[event]&d=[delivery_id]&c=[call_uuid]&n=[caller_number]&cmp=[campaign]"
        "&p=[publisher_id]&zip=[tag:zip]&missing=[tag:income|unknown]&none=[tag:income]&x=[odd]"
    )
    webhook = await hooks.webhook(template, method="GET", events=["call.connected"])
    caller = fresh_caller()
    await postback(hooks.client, key, caller, zip="10 001&x")
    call = await start_call(hooks.client, caller, publisher_id="pub-9", campaign="solar power")
    assert await hooks.deliver() == ["delivered"]

    (request,) = hooks.receiver.requests
    assert request.method == "GET"
    assert request.body == b""
    assert "content-type" not in request.headers
    path, _, query = request.target.partition("?")
    assert path == "/pixel"
    values = parse_qs(query, keep_blank_values=True)
    assert values["e"] == ["call.connected"]
    assert values["d"] == [request.headers["x-calltags-delivery"]]
    assert values["c"] == [call["call_uuid"]]
    assert values["n"] == [caller]
    assert values["cmp"] == ["solar power"]
    assert values["p"] == ["pub-9"]
    assert values["zip"] == ["10 001&x"]  # URL-encoded, so it stays one value
    assert values["missing"] == ["unknown"]
    assert values["none"] == [""]
    assert values["x"] == ["[odd]"]  # not a token
    headers = request.headers
    assert verify(webhook["secret"], headers["x-calltags-timestamp"], b"",
                  headers["x-calltags-signature"])  # fmt: skip


async def test_filters_choose_the_webhooks_that_fire(hooks: Hooks, key: dict[str, Any]) -> None:
    publisher = key["publisher_id"]
    await hooks.webhook("/all")
    await hooks.webhook("/ours", publisher_id=publisher)
    await hooks.webhook("/other-publisher", publisher_id=publisher + 1000)
    await hooks.webhook("/roofing", campaign="roofing")
    await hooks.webhook("/solar", campaign="solar")
    await hooks.webhook("/has-zip", tag_filters=[{"tag": "zip", "op": "exists"}])
    await hooks.webhook("/ny", tag_filters=[{"tag": "zip", "op": "equals", "value": "10001"}])
    await hooks.webhook(
        "/ny-qualified",
        tag_filters=[
            {"tag": "zip", "op": "one_of", "value": ["10001", "10002"]},
            {"tag": "qualified", "op": "equals", "value": "yes"},
        ],
    )
    await hooks.webhook("/ends", events=["call.ended"])
    await hooks.webhook("/off", enabled=False)

    caller = fresh_caller()
    call = await start_call(hooks.client, caller, campaign="roofing")
    await postback(hooks.client, key, caller, zip="10001")
    await postback(hooks.client, key, caller, qualified="yes")
    await end(hooks.client, call["call_uuid"])
    await hooks.deliver()

    fired: dict[str, list[str]] = {}
    for request in hooks.receiver.requests:
        fired.setdefault(request.target, []).append(request.headers["x-calltags-event"])
    fired = {path: sorted(events) for path, events in fired.items()}
    applied2, ended = ["call.tags_applied"] * 2, ["call.ended"]
    assert fired == {
        "/all": sorted(["call.connected", *applied2, *ended]),
        # the posting publisher: routing gave the call none
        "/ours": sorted(applied2),
        "/roofing": sorted(["call.connected", *applied2, *ended]),
        "/has-zip": sorted([*applied2, *ended]),
        "/ny": sorted([*applied2, *ended]),
        "/ny-qualified": sorted(["call.tags_applied", *ended]),
        "/ends": ended,
    }


async def test_a_publisher_filter_matches_the_publisher_routing_gave_the_call(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    await hooks.webhook("/p", publisher_id=4242, events=["call.connected"])
    await start_call(hooks.client, fresh_caller(), publisher_id="4242")
    await start_call(hooks.client, fresh_caller(), publisher_id="4243")
    assert await hooks.deliver() == ["delivered"]


# -- delivery --------------------------------------------------------------------------------


async def test_a_delivery_retried_after_three_500s_is_delivered_once_with_one_id(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    webhook = await hooks.webhook(events=["tags.stored"])
    hooks.receiver.answers = [500, 500, 500]
    hooks.receiver.answer_body = b"<script>no</script>"
    await postback(hooks.client, key, fresh_caller(), zip="1")
    assert await hooks.deliver() == ["pending"]
    await hooks.settle()

    requests = hooks.receiver.requests
    assert len(requests) == 4
    assert len({r.headers["x-calltags-delivery"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert gaps[2] > gaps[0]  # backing off
    listed = await hooks.client.get(f"/admin/webhooks/{webhook['id']}/deliveries", headers=ADMIN)
    (item,) = listed.json()["items"]
    assert item["id"] == requests[0].headers["x-calltags-delivery"]
    assert (item["state"], item["attempts"], item["last_status"]) == ("delivered", 4, 200)
    assert item["last_error"] is None
    assert item["delivered_at"] is not None and item["next_attempt_at"] is None


async def test_a_delivery_fails_after_its_last_attempt_and_says_why(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    webhook = await hooks.webhook(events=["tags.stored"])
    hooks.receiver.answers = [503] * 10
    hooks.receiver.answer_body = b"x" * 200_000  # more than a receiver's answer is read
    await postback(hooks.client, key, fresh_caller(), zip="1")
    await hooks.deliver()
    await hooks.settle()
    assert len(hooks.receiver.requests) == 5  # webhook_max_attempts
    listed = await hooks.client.get(f"/admin/webhooks/{webhook['id']}/deliveries", headers=ADMIN)
    (item,) = listed.json()["items"]
    assert (item["state"], item["attempts"], item["last_status"]) == ("failed", 5, 503)
    assert item["last_error"].startswith("HTTP 503: xxx")
    assert len(item["last_error"]) < 400
    found = (await hooks.client.get(f"/admin/webhooks/{webhook['id']}", headers=ADMIN)).json()
    assert found["failures_in_row"] == 1 and found["enabled"]


async def test_a_webhook_disables_itself_after_failed_deliveries_in_a_row(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    hooks.courier.max_attempts = 1
    hooks.courier.disable_after = 2
    webhook = await hooks.webhook(events=["tags.stored"])
    hooks.receiver.answers = [500, 200, 500, 500]
    for _ in range(4):
        await postback(hooks.client, key, fresh_caller(), zip="1")
        await hooks.deliver()
    found = (await hooks.client.get(f"/admin/webhooks/{webhook['id']}", headers=ADMIN)).json()
    assert found["enabled"] is False
    assert found["disabled_reason"] == "disabled after 2 failed deliveries in a row"
    await postback(hooks.client, key, fresh_caller(), zip="1")
    assert await hooks.deliver() == []  # a disabled webhook makes no new delivery
    response = await hooks.client.patch(
        f"/admin/webhooks/{webhook['id']}", json={"enabled": True}, headers=ADMIN
    )
    assert response.json()["failures_in_row"] == 0
    assert response.json()["disabled_reason"] is None


async def test_no_delivery_goes_to_a_private_address_without_the_setting(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    hooks.courier.sender = Sender(2.0, allow_private=False)
    for host in ("127.0.0.1", "localhost", "10.1.2.3", "169.254.169.254", "[::1]"):
        port = hooks.receiver.port
        await hooks.webhook(events=["tags.stored"], url=f"http://{host}:{port}/x")
    await postback(hooks.client, key, fresh_caller(), zip="1")
    assert await hooks.deliver() == ["failed"] * 5
    assert hooks.receiver.requests == []
    response = await hooks.client.get("/admin/deliveries", headers=ADMIN)
    items = response.json()["items"]
    assert len(items) == 5
    for item in items:
        assert item["state"] == "failed"
        assert item["attempts"] == 1
        assert item["last_status"] is None
        assert item["last_error"].startswith("refused: ")
        assert "CALLTAGS_WEBHOOK_ALLOW_PRIVATE" in item["last_error"]


# -- the outbox ------------------------------------------------------------------------------


async def test_a_batch_committed_twice_makes_its_deliveries_once(
    hooks: Hooks, key: dict[str, Any], mine: Settings, redis: Redis
) -> None:
    await hooks.webhook(events=["tags.stored"])
    await hooks.webhook("/second", events=["tags.stored"])
    await postback(hooks.client, key, fresh_caller(), zip="1")
    stream = keyspace(mine).log_shards_all()
    batch = []
    for name in stream:
        batch += [(name, e) for e in await redis.xrange(name)]
    assert len(batch) == 1
    name, item = batch[0]
    sink = hooks.sink
    assert sink.outbox is not None
    rows = sink._rows(name, [item])
    first = await sink.writer.commit(*rows, outbox=await sink.outbox.plan([item], postbacks=True))
    again = await sink.writer.commit(*rows, outbox=await sink.outbox.plan([item], postbacks=True))
    assert len(first) == 2 and again == []
    assert await hooks.flush() == []  # the same entry, flushed the usual way


async def test_replays_and_refused_postbacks_make_no_delivery(
    hooks: Hooks, mine: Settings, redis: Redis
) -> None:
    await hooks.webhook()
    await fill(
        redis,
        keyspace(mine),
        [
            {**entry("replay", 1), "replayed": True},
            entry("refused", 2, status=None, error="invalid_key", http_status=401),
            entry("stored", 3),
        ],
    )
    made = await hooks.flush()
    assert len(made) == 1


# -- the admin API ---------------------------------------------------------------------------


async def test_create_list_change_and_delete_a_webhook(hooks: Hooks) -> None:
    created = await hooks.webhook(
        events=["call.ended"],
        publisher_id=3,
        campaign="roofing",
        tag_filters=[{"tag": "zip", "op": "one_of", "value": ["1", "2"]}],
    )
    assert created["secret"].startswith("whsec_")
    assert created["method"] == "POST" and created["enabled"] is True
    assert created["tag_filters"] == [{"tag": "zip", "op": "one_of", "value": ["1", "2"]}]
    listed = (await hooks.client.get("/admin/webhooks", headers=ADMIN)).json()["items"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]
    path = f"/admin/webhooks/{created['id']}"
    changed = await hooks.client.patch(
        path, json={"enabled": False, "campaign": None, "method": "GET"}, headers=ADMIN
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["enabled"], body["campaign"], body["method"]) == (False, None, "GET")
    assert body["publisher_id"] == 3
    assert (await hooks.client.delete(path, headers=ADMIN)).status_code == 200
    assert_error(await hooks.client.get(path, headers=ADMIN), 404, "webhook_not_found")
    assert_error(await hooks.client.delete(path, headers=ADMIN), 404, "webhook_not_found")
    assert_error(await hooks.client.get("/admin/webhooks/x1", headers=ADMIN), 404,
                 "webhook_not_found")  # fmt: skip


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "ftp://example.com/x"},
        {"url": "not a url"},
        {"events": []},
        {"events": ["call.started"]},
        {"events": ["call.ended", "call.ended"]},
        {"method": "PUT"},
        {"tag_filters": [{"tag": "zip", "op": "equals"}]},
        {"tag_filters": [{"tag": "zip", "op": "one_of", "value": []}]},
        {"tag_filters": [{"tag": "zip", "op": "exists", "value": "1"}]},
        {"tag_filters": [{"tag": "zip", "op": "like", "value": "1"}]},
        {"publisher_id": 0},
        {"colour": "red"},
    ],
)
async def test_a_webhook_that_does_not_fit_is_422(
    app: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    body = {"name": "x", "url": "https://example.com/hook", "events": ["call.ended"], **fields}
    assert_error(await app.post("/admin/webhooks", json=body, headers=ADMIN), 422,
                 "invalid_request")  # fmt: skip


async def test_the_webhook_routes_need_the_admin_token(app: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/admin/webhooks"),
        ("POST", "/admin/webhooks"),
        ("PATCH", "/admin/webhooks/1"),
        ("POST", "/admin/webhooks/1/test"),
        ("GET", "/admin/webhooks/1/deliveries"),
        ("GET", "/admin/deliveries"),
    ]:
        response = await app.request(method, path, headers=ROUTING)
        assert_error(response, 401, "unauthorized")


async def test_a_test_event_is_sent_now_and_answers_the_receivers_status(
    hooks: Hooks,
) -> None:
    webhook = await hooks.webhook()
    hooks.receiver.answers = [418]
    response = await hooks.client.post(f"/admin/webhooks/{webhook['id']}/test", headers=ADMIN)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["delivered"] is False and answer["status"] == 418
    (request,) = hooks.receiver.requests
    assert request.headers["x-calltags-event"] == "webhook.test"
    assert orjson.loads(request.body)["delivery_id"] == answer["delivery_id"]
    assert verify(webhook["secret"], request.headers["x-calltags-timestamp"], request.body,
                  request.headers["x-calltags-signature"])  # fmt: skip
    await hooks.receiver.stop()
    answer = (
        await hooks.client.post(f"/admin/webhooks/{webhook['id']}/test", headers=ADMIN)
    ).json()
    assert answer["delivered"] is False and answer["status"] is None
    assert answer["error"].startswith("ClientConnectorError")
    listed = await hooks.client.get(
        f"/admin/webhooks/{webhook['id']}/deliveries?event=webhook.test", headers=ADMIN
    )
    assert [i["state"] for i in listed.json()["items"]] == ["failed", "failed"]


async def test_deliveries_are_paged_and_found_by_call(hooks: Hooks, key: dict[str, Any]) -> None:
    webhook = await hooks.webhook()
    caller = fresh_caller()
    call = await start_call(hooks.client, caller)
    for n in range(3):
        await postback(hooks.client, key, caller, n=str(n))
    await end(hooks.client, call["call_uuid"])
    await start_call(hooks.client, fresh_caller())  # another call's delivery
    await hooks.deliver()
    seen: list[str] = []
    url = f"/admin/deliveries?call_uuid={call['call_uuid']}&limit=2"
    while url:
        page = (await hooks.client.get(url, headers=ADMIN)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        url = (
            f"/admin/deliveries?call_uuid={call['call_uuid']}&limit=2&cursor={cursor}"
            if cursor
            else ""
        )
    assert len(seen) == len(set(seen)) == 5
    everything = await hooks.client.get(
        f"/admin/webhooks/{webhook['id']}/deliveries?limit=100", headers=ADMIN
    )
    assert len(everything.json()["items"]) == 6
    assert_error(
        await hooks.client.get("/admin/deliveries?cursor=nope", headers=ADMIN), 422,
        "invalid_request",
    )  # fmt: skip
    assert_error(
        await hooks.client.get("/admin/webhooks/999999/deliveries", headers=ADMIN), 404,
        "webhook_not_found",
    )  # fmt: skip


async def test_metrics_count_deliveries_by_state(hooks: Hooks, key: dict[str, Any]) -> None:
    await hooks.webhook(events=["tags.stored"])
    hooks.receiver.answers = [500]
    for _ in range(2):
        await postback(hooks.client, key, fresh_caller(), zip="1")
    await hooks.deliver()
    stats = DeliveryStats()
    stats.counts, stats.within, stats.total_seconds = await hooks.courier.store.stats(
        DELIVERY_BUCKETS
    )
    registry = CollectorRegistry()
    registry.register(stats)
    text = generate_latest(registry).decode()
    assert 'calltags_webhook_deliveries{state="pending"} 1.0' in text
    assert 'calltags_webhook_deliveries{state="delivered"} 1.0' in text
    assert 'calltags_webhook_deliveries{state="failed"} 0.0' in text
    assert 'calltags_webhook_delivery_latency_seconds_bucket{le="+Inf"} 1.0' in text
    assert "calltags_webhook_delivery_latency_seconds_count 1.0" in text
    served = (await hooks.client.get("/metrics", headers=ADMIN)).text
    assert 'calltags_webhook_deliveries{state="pending"}' in served


async def test_the_cli_creates_lists_tests_and_disables_a_webhook(
    hooks: Hooks, settings: Settings, tmp_path: Path
) -> None:
    cli = Cli(settings, tmp_path)
    cli.env["CALLTAGS_WEBHOOK_ALLOW_PRIVATE"] = "1"
    url = hooks.receiver.url + "/cli?c=[call_uuid]"
    _, out, _ = await cli.run(
        "webhook", "create", "--name", "crm", "--url", url, "--event", "call.ended",
        "--event", "tags.stored", "--tag", "zip=1|2", "--tag", "sale",
    )  # fmt: skip
    created = leading_json(out)
    assert created["events"] == ["call.ended", "tags.stored"]
    assert created["tag_filters"] == [
        {"tag": "zip", "op": "one_of", "value": ["1", "2"]},
        {"tag": "sale", "op": "exists", "value": None},
    ]
    assert created["secret"] in out.split("signing secret")[1]
    _, out, _ = await cli.run("webhook", "list")
    assert f"{created['id']:>6}  enabled" in out
    _, out, _ = await cli.run("webhook", "test", str(created["id"]))
    assert leading_json(out)["status"] == 200
    assert [r.headers["x-calltags-event"] for r in hooks.receiver.requests] == ["webhook.test"]
    _, out, _ = await cli.run("webhook", "disable", str(created["id"]))
    assert leading_json(out)["enabled"] is False
    code, _, err = await cli.run("webhook", "test", "999999", ok=False)
    assert code != 0 and "no webhook with id 999999" in err
    code, _, err = await cli.run(
        "webhook", "create", "--name", "x", "--url", "ftp://x", "--event", "call.ended", ok=False
    )
    assert code != 0 and "url" in err


# -- the console -----------------------------------------------------------------------------


async def test_the_console_adds_lists_and_tests_webhooks_and_shows_deliveries(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    client = hooks.client
    browser = await sign_in(client)
    try:
        refused = await client.post(
            "/console/webhooks",
            data=browser.form(name="crm", url="ftp://nope", events="call.ended"),
            headers=browser.headers,
        )
        assert refused.status_code == 422
        assert "url must be an http" in refused.text
        assert value(refused.text, "webhook-url") == "ftp://nope"  # kept as typed
        added = await client.post(
            "/console/webhooks",
            data=browser.form(
                name="crm <b>",
                url=hooks.receiver.url + "/console",
                events="call.connected, call.ended",
                tag_filters="zip=10001|10002",
            ),
            headers=browser.headers,
        )
        assert added.status_code == 200, added.text
        secret = value(added.text, "webhook-secret")
        assert secret.startswith("whsec_")
        assert "crm &lt;b&gt;" in added.text
        (webhook,) = (await client.get("/admin/webhooks", headers=ADMIN)).json()["items"]
        assert webhook["tag_filters"] == [
            {"tag": "zip", "op": "one_of", "value": ["10001", "10002"]}
        ]
        listed = await client.get("/console/webhooks", headers=browser.headers)
        assert secret not in listed.text
        assert texts(listed.text, "state") == ["enabled"]

        caller = fresh_caller()
        await postback(client, key, caller, zip="10001")
        call = await start_call(client, caller)
        hooks.receiver.answers = [500]
        hooks.receiver.answer_body = b"<script>alert(1)</script>"
        assert await hooks.deliver() == ["pending"]
        page = await client.get(f"/console/webhooks/{webhook['id']}", headers=browser.headers)
        assert page.status_code == 200
        assert "HTTP 500: &lt;script&gt;" in page.text and "<script>alert" not in page.text
        assert texts(page.text, "event", ("class", "list deliveries")) == ["call.connected"]
        call_page = await client.get(f"/console/calls/{call['call_uuid']}", headers=browser.headers)
        assert call_page.status_code == 200
        assert texts(call_page.text, "event") == ["call.connected"]

        tested = await client.post(
            f"/console/webhooks/{webhook['id']}/test",
            data=browser.form(),
            headers=browser.headers,
        )
        assert "webhook.test delivered" in " ".join(texts(tested.text, "tested"))
        disabled = await client.post(
            f"/console/webhooks/{webhook['id']}/disable",
            data=browser.form(),
            headers=browser.headers,
        )
        assert disabled.status_code == 303
        listed = await client.get("/console/webhooks", headers=browser.headers)
        assert texts(listed.text, "state") == ["disabled"]
        missing = await client.get("/console/webhooks/999999", headers=browser.headers)
        assert missing.status_code == 404
    finally:
        client.cookies.clear()


async def test_deliveries_done_are_deleted_after_the_retention(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    await hooks.webhook(events=["tags.stored"])
    for _ in range(2):
        await postback(hooks.client, key, fresh_caller(), zip="1")
    done, pending = await hooks.flush()
    await hooks.courier.attempt([done])
    await hooks.courier.store.pool.execute(
        "UPDATE webhook_deliveries SET updated_at = now() - interval '3 days'"
    )
    assert await hooks.courier.store.prune(2) == 1
    left = await hooks.courier.store.pool.fetch("SELECT id::text AS id FROM webhook_deliveries")
    assert [row["id"] for row in left] == [pending]


async def test_erasing_a_caller_deletes_its_deliveries(hooks: Hooks, key: dict[str, Any]) -> None:
    await hooks.webhook(events=["tags.stored"])
    hooks.receiver.answers = [500]
    erased, kept = fresh_caller(), fresh_caller()
    await postback(hooks.client, key, erased, zip="1")
    await postback(hooks.client, key, kept, zip="2")
    await hooks.deliver()
    response = await hooks.client.post(
        f"/admin/callers/{quote(erased, safe='')}/erase", headers=ADMIN
    )
    assert response.status_code == 200, response.text
    left = await hooks.courier.store.pool.fetch("SELECT caller_number FROM webhook_deliveries")
    assert [row["caller_number"] for row in left] == [kept]


def test_the_webhook_settings_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIMEOUT_SECONDS", "RETRY_BASE_SECONDS", "MAX_ATTEMPTS", "DISABLE_AFTER"):
        monkeypatch.delenv(f"CALLTAGS_WEBHOOK_{name}", raising=False)
    monkeypatch.delenv("CALLTAGS_WEBHOOK_ALLOW_PRIVATE", raising=False)
    found = load_settings(env_file=None)
    assert (found.webhook_timeout_seconds, found.webhook_retry_base_seconds) == (10.0, 10.0)
    assert (found.webhook_max_attempts, found.webhook_disable_after) == (15, 50)
    assert found.webhook_allow_private is False
    monkeypatch.setenv("CALLTAGS_WEBHOOK_RETRY_BASE_SECONDS", "0.5")
    monkeypatch.setenv("CALLTAGS_WEBHOOK_ALLOW_PRIVATE", "1")
    found = load_settings(env_file=None)
    assert found.webhook_retry_base_seconds == 0.5 and found.webhook_allow_private
    for name, bad in (("TIMEOUT_SECONDS", "soon"), ("MAX_ATTEMPTS", "0")):
        monkeypatch.setenv(f"CALLTAGS_WEBHOOK_{name}", bad)
        with pytest.raises(ConfigError, match=f"CALLTAGS_WEBHOOK_{name}"):
            load_settings(env_file=None)
        monkeypatch.delenv(f"CALLTAGS_WEBHOOK_{name}")


async def test_an_event_flushed_after_its_callers_erase_makes_no_delivery(
    hooks: Hooks, key: dict[str, Any]
) -> None:
    await hooks.webhook(events=["tags.stored"])
    erased, kept = fresh_caller(), fresh_caller()
    await postback(hooks.client, key, erased, zip="1")  # still in Redis during the erase
    await postback(hooks.client, key, kept, zip="2")
    response = await hooks.client.post(
        f"/admin/callers/{quote(erased, safe='')}/erase", headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert len(await hooks.flush()) == 1
    left = await hooks.courier.store.pool.fetch("SELECT caller_number FROM webhook_deliveries")
    assert [row["caller_number"] for row in left] == [kept]
