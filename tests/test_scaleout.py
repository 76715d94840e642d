"""Scale-out: several web processes and several workers at once.

Two uvicorn processes serve /data_writing and /calls; two `arq workers.flush.WorkerSettings`
processes flush the log, all against the local 3-master cluster with
CALLTAGS_TEST_REDIS=cluster (else the single node). Each caller's postbacks and connects
race each other and are spread over both web processes, so tags posted through one
process are claimed through the other. Exactly one call holds each posted tag, in Redis
and in the call records, and the Postgres log has one row per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from conftest import ADMIN_TOKEN, CLUSTER, ROUTING, ROUTING_TOKEN, Keys, fresh_caller, running_app
from logtools import (
    eventually,
    fetch,
    forget_arq_jobs,
    free_port,
    keyspace,
    own_prefix,
    process_env,
    process_output,
    processes,
    start_process,
    stream_lengths,
)

from calltags.config import Settings
from calltags.store import RedisClient

WEB_PROCESSES = 2
WORKERS = 2
CALLERS = 40
POSTS_PER_CALLER = 8  # each a tag of its own: t0, t1, ...
CONNECTS_PER_CALLER = 3  # racing the posts
REJECTED_PER_CALLER = 1  # a 422, logged like the others
STORED = "call not found, tags stored"
LIVE = "call in progress, tags applied"


@contextlib.asynccontextmanager
async def _clients(bases: list[str], marker: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, headers={"user-agent": marker}, timeout=30)
            )
            for base in bases
        ]
        yield clients


async def test_many_web_processes_and_workers_at_once(
    settings: Settings,
    redis: RedisClient,
    redis_url: str,
    queue_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    mine = own_prefix(settings, "scale")
    keys = keyspace(mine)
    async with running_app(mine) as admin:
        key = await Keys(admin).key()
    env = process_env(
        mine,
        redis_url,
        queue_url,
        database_url,
        CALLTAGS_ADMIN_TOKEN=ADMIN_TOKEN,
        CALLTAGS_ROUTING_TOKEN=ROUTING_TOKEN,
        CALLTAGS_RATE_LIMIT="0",
        CALLTAGS_FLUSH_BATCH="50",  # small batches, so that both workers get some
    )
    marker = f"scaleout-{secrets.token_hex(4)}"
    queue = f"{mine.redis_prefix}arq:queue"
    try:
        with processes() as started:
            ports = [free_port() for _ in range(WEB_PROCESSES)]
            for n, port in enumerate(ports):
                start_process(started, tmp_path, f"web{n}", [
                    sys.executable, "-m", "uvicorn", "--factory", "calltags.app:create_app",
                    "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                    "--log-level", "warning",
                ], env)  # fmt: skip
            workers = [
                start_process(
                    started,
                    tmp_path,
                    f"worker{n}",
                    [sys.executable, "-m", "arq", "workers.flush.WorkerSettings"],
                    env,
                )
                for n in range(WORKERS)
            ]
            bases = [f"http://127.0.0.1:{port}" for port in ports]
            async with _clients(bases, marker) as web:
                await _wait_until_up(started, tmp_path, web)
                posted, connects = await _race(web, key["key"])
                finals = await _sweep(web, list(posted))
                await _check_claims(web, posted, connects, finals)

            requests = CALLERS * (POSTS_PER_CALLER + REJECTED_PER_CALLER)
            call_uuids = [u for caller_uuids in connects.values() for u in caller_uuids]
            call_uuids += [call["call_uuid"] for call in finals.values()]

            async def flushed() -> bool:
                rows = await fetch(
                    database_url,
                    "SELECT count(*) AS n FROM postbacks WHERE user_agent = $1",
                    marker,
                )
                calls = await fetch(
                    database_url,
                    "SELECT count(*) AS n FROM calls WHERE call_uuid = ANY($1::text[])",
                    call_uuids,
                )
                return (
                    rows[0]["n"] >= requests
                    and calls[0]["n"] >= len(call_uuids)
                    and await stream_lengths(redis, keys) == 0
                )

            await eventually(flushed, timeout=60, every=0.2)
            for proc in workers:  # a graceful stop: each logs what it flushed
                proc.send_signal(signal.SIGTERM)
            for proc in workers:
                proc.wait(timeout=30)
        moved = [_flushed_rows(process_output(tmp_path, f"worker{n}")) for n in range(WORKERS)]
    finally:
        await forget_arq_jobs(queue_url, queue)

    # Every request is one row, none twice; each posted tag in exactly one row.
    rows = await fetch(
        database_url,
        "SELECT id, caller_number, tags, status, error FROM postbacks WHERE user_agent = $1",
        marker,
    )
    assert len(rows) == requests
    assert len({row["id"] for row in rows}) == requests
    accepted = Counter(
        (row["caller_number"], name)
        for row in rows
        if row["error"] is None
        for name in orjson.loads(row["tags"])
    )
    assert set(accepted) == {(c, t) for c, tags in posted.items() for t in tags}
    assert set(accepted.values()) == {1}
    assert Counter(row["error"] for row in rows)["invalid_caller_number"] == (
        CALLERS * REJECTED_PER_CALLER
    )
    # Both workers took part.
    assert all(n > 0 for n in moved), moved
    assert sum(moved) >= requests

    # The call records in Postgres say the same: each tag in exactly one call.
    records = await fetch(
        database_url,
        "SELECT call_uuid, caller_number, tags FROM calls WHERE call_uuid = ANY($1::text[])",
        call_uuids,
    )
    assert len(records) == len(call_uuids)
    held = Counter((r["caller_number"], name) for r in records for name in orjson.loads(r["tags"]))
    assert set(held) == set(accepted)
    assert set(held.values()) == {1}

    if not CLUSTER:
        return
    # The callers' keys spread over the three masters.
    nodes = set()
    async for name in redis.scan_iter(match=f"{mine.redis_prefix}{{+*", count=1000):
        nodes.add(redis.get_node_from_key(name).name)
    assert len(nodes) == 3


async def _wait_until_up(
    started: list[tuple[str, subprocess.Popen[bytes]]],
    folder: Path,
    web: list[httpx.AsyncClient],
) -> None:
    """Every web process is ready, and every worker flushes."""
    seen: dict[str, object] = {}

    async def up() -> bool:
        for name, proc in started:
            assert proc.poll() is None, f"{name} stopped:\n{process_output(folder, name)}"
        for n, client in enumerate(web):
            try:
                seen[f"web{n}"] = (await client.get("/readyz")).status_code
            except httpx.TransportError as exc:
                seen[f"web{n}"] = repr(exc)
        # A worker logs this once its flush tasks run.
        seen["workers"] = sum(
            "flushing " in process_output(folder, name)
            for name, _ in started
            if name.startswith("worker")
        )
        return seen["workers"] == WORKERS and all(seen[f"web{n}"] == 200 for n in range(len(web)))

    try:
        await eventually(up, timeout=60, every=0.1)
    except AssertionError as exc:
        logs = "\n".join(
            f"--- {name}\n{process_output(folder, name)[-3000:]}" for name, _ in started
        )
        raise AssertionError(f"not up: {seen}\n{logs}") from exc


async def _race(
    web: list[httpx.AsyncClient], secret: str
) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """Postbacks and connects of every caller at once, shuffled, the jobs dealt to the web
    processes in turn; (posted tags by caller, call_uuids of the connects by caller)."""
    rng = random.Random(17)
    callers = [fresh_caller() for _ in range(CALLERS)]
    jobs: list[tuple[str, str, str]] = []  # (kind, caller, tag name or call_uuid)
    for caller in callers:
        jobs += [("post", caller, f"t{n}") for n in range(POSTS_PER_CALLER)]
        jobs += [("bad", caller, "x") for _ in range(REJECTED_PER_CALLER)]
        jobs += [("connect", caller, str(uuid.uuid4())) for _ in range(CONNECTS_PER_CALLER)]
    rng.shuffle(jobs)
    gate = asyncio.Semaphore(32)

    async def run(n: int, kind: str, caller: str, name: str) -> None:
        client = web[n % len(web)]
        async with gate:
            if kind == "connect":
                payload = {"caller_number": caller, "call_uuid": name}
                response = await client.post("/calls", json=payload, headers=ROUTING)
                assert response.status_code == 201, response.text
            elif kind == "bad":
                response = await client.get(
                    "/data_writing", params={"key": secret, "caller_number": "12", "a": "1"}
                )
                assert response.status_code == 422, response.text
            else:
                response = await client.get(
                    "/data_writing", params={"key": secret, "caller_number": caller, name: caller}
                )
                assert response.status_code == 200, response.text
                assert response.json()["status"] in (STORED, LIVE)

    await asyncio.gather(*(run(n, *job) for n, job in enumerate(jobs)))
    posted = {c: {f"t{n}": c for n in range(POSTS_PER_CALLER)} for c in callers}
    connects: dict[str, list[str]] = {c: [] for c in callers}
    for kind, caller, name in jobs:
        if kind == "connect":
            connects[caller].append(name)
    return posted, connects


async def _sweep(web: list[httpx.AsyncClient], callers: list[str]) -> dict[str, dict[str, Any]]:
    """Whatever is still pending goes to one more call per caller, through either process."""
    finals: dict[str, dict[str, Any]] = {}
    for n, caller in enumerate(callers):
        response = await web[n % len(web)].post(
            "/calls", json={"caller_number": caller}, headers=ROUTING
        )
        assert response.status_code == 201, response.text
        finals[caller] = response.json()
    return finals


async def _check_claims(
    web: list[httpx.AsyncClient],
    posted: dict[str, dict[str, str]],
    connects: dict[str, list[str]],
    finals: dict[str, dict[str, Any]],
) -> None:
    """Each posted tag is held by exactly one of its caller's calls, as the web
    processes read them (a caller's calls through one process and the other in turn)."""
    for n, (caller, tags) in enumerate(posted.items()):
        holders: Counter[str] = Counter(list(finals[caller]["tags"]))
        for m, call_uuid in enumerate(connects[caller]):
            response = await web[(n + m + 1) % len(web)].get(f"/calls/{call_uuid}", headers=ROUTING)
            assert response.status_code == 200, response.text
            call = response.json()
            assert call["caller_number"] == caller
            holders.update(list(call["tags"]))
            assert all(value == caller for value in call["tags"].values())
        assert set(holders) == set(tags), (caller, set(tags) - set(holders))
        assert set(holders.values()) == {1}, (caller, holders)


def _flushed_rows(output: str) -> int:
    """The postback rows a worker moved, from the line it logs when it stops."""
    found = re.search(r"flushed .*\brows=(\d+)", output)
    assert found, f"the worker logged no counters:\n{output}"
    return int(found.group(1))
