"""Atomic claim: of any number of concurrent connects, exactly one receives a pending tag,
and postbacks racing connects never lose a tag."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import httpx
from apitools import connect, get_call
from conftest import fresh_caller

STORED = "call not found, tags stored"
LIVE = "call in progress, tags applied"

CALLERS = 50
CONNECTS_PER_CALLER = 10


async def post_tags(
    client: httpx.AsyncClient, secret: str, caller: str, tags: dict[str, str]
) -> dict[str, Any]:
    response = await client.post(
        "/data_writing", json={"key": secret, "caller_number": caller, **tags}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_parallel_connects_exactly_one_winner_per_tag(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    callers = [fresh_caller() for _ in range(CALLERS)]
    pending = {
        caller: {"lead_id": f"lead-{n}", "zip": f"{10000 + n}", "prequalified": "true"}
        for n, caller in enumerate(callers)
    }
    # Two postbacks per caller, so the pending hash holds tags of more than one write.
    first = {c: dict(list(tags.items())[:2]) for c, tags in pending.items()}
    second = {c: dict(list(tags.items())[2:]) for c, tags in pending.items()}
    stored = await asyncio.gather(
        *(post_tags(client, key["key"], c, first[c]) for c in callers),
        *(post_tags(client, key["key"], c, second[c]) for c in callers),
    )
    assert all(body["status"] == STORED for body in stored)

    attempts = [caller for caller in callers for _ in range(CONNECTS_PER_CALLER)]
    random.Random(7).shuffle(attempts)
    calls = await asyncio.gather(*(connect(client, caller) for caller in attempts))

    by_caller: dict[str, list[dict[str, Any]]] = {caller: [] for caller in callers}
    for call in calls:
        by_caller[call["caller_number"]].append(call)
    for caller, caller_calls in by_caller.items():
        assert len(caller_calls) == CONNECTS_PER_CALLER
        assert len({call["call_uuid"] for call in caller_calls}) == CONNECTS_PER_CALLER
        winners = [call for call in caller_calls if call["tags"]]
        assert len(winners) == 1, (caller, [call["tags"] for call in caller_calls])
        assert winners[0]["tags"] == pending[caller]
        assert set(winners[0]["tag_sources"]) == set(pending[caller])
        for call in caller_calls:
            if call is not winners[0]:
                assert call["tags"] == {}
                assert call["tag_sources"] == {}

    # What the connects answered is what the calls hold.
    for call in random.Random(8).sample(calls, 25):
        assert (await get_call(client, call["call_uuid"]))["tags"] == call["tags"]


async def test_postbacks_racing_connects_never_lose_a_tag(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    callers = [fresh_caller() for _ in range(20)]
    posts_per_caller, connects_per_caller = 20, 5
    rng = random.Random(11)

    jobs: list[tuple[str, str, str]] = []  # (kind, caller, tag name or call_uuid)
    for caller in callers:
        jobs += [("post", caller, f"t{n}") for n in range(posts_per_caller)]
        jobs += [("connect", caller, f"race-{uuid.uuid4()}") for _ in range(connects_per_caller)]
    rng.shuffle(jobs)

    async def run(kind: str, caller: str, name: str) -> tuple[str, str, str, dict[str, Any]]:
        if kind == "post":
            return kind, caller, name, await post_tags(client, key["key"], caller, {name: caller})
        return kind, caller, name, await connect(client, caller, name)

    results = await asyncio.gather(*(run(*job) for job in jobs))

    # Whatever is still pending goes to one more call per caller.
    final = {caller: await connect(client, caller) for caller in callers}

    for caller in callers:
        call_uuids = [name for kind, c, name, _ in results if kind == "connect" and c == caller]
        holders: Counter[str] = Counter()
        held_by: dict[str, str] = {}
        for call_uuid in call_uuids:
            call = await get_call(client, call_uuid)
            assert call["caller_number"] == caller
            for tag, value in call["tags"].items():
                assert value == caller
                holders[tag] += 1
                held_by[tag] = call_uuid
        for tag in final[caller]["tags"]:
            holders[tag] += 1
            held_by[tag] = final[caller]["call_uuid"]

        posted = {f"t{n}" for n in range(posts_per_caller)}
        assert set(holders) == posted, (caller, posted - set(holders))
        assert all(count == 1 for count in holders.values()), (caller, holders)

        for kind, c, name, body in results:
            if kind != "post" or c != caller:
                continue
            if body["status"] == LIVE:
                # Applied at once: the call the answer names holds it.
                assert held_by[name] == body["call_uuid"]
            else:
                assert body["status"] == STORED
                assert held_by[name] != body.get("call_uuid")
