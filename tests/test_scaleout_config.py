"""Settings for Redis Cluster and Sentinel: the cluster client, the arq queue's own
single node, and clients of the primary that Sentinels name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from calltags.clients import redis_client
from calltags.config import load_settings
from calltags.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CALLTAGS_REDIS_CLUSTER", "CALLTAGS_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_queue_defaults_to_a_single_node_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    assert load_settings(env_file=None).arq_queue_url() == "redis://127.0.0.1:6379/3"
    monkeypatch.setenv("CALLTAGS_QUEUE_URL", "redis://queue:6379/0")
    assert load_settings(env_file=None).arq_queue_url() == "redis://queue:6379/0"


@pytest.mark.parametrize(
    ("url", "flag"),
    [("redis+cluster://10.0.0.1:7000", "0"), ("redis://10.0.0.1:7000", "1")],
)
def test_a_cluster_needs_its_own_queue_url(
    monkeypatch: pytest.MonkeyPatch, url: str, flag: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("CALLTAGS_REDIS_CLUSTER", flag)
    settings = load_settings(env_file=None)
    assert settings.uses_cluster
    with pytest.raises(ConfigError, match="CALLTAGS_QUEUE_URL"):
        settings.arq_queue_url()
    monkeypatch.setenv("CALLTAGS_QUEUE_URL", "redis+cluster://10.0.0.1:7000")
    with pytest.raises(ConfigError, match="CALLTAGS_QUEUE_URL"):
        load_settings(env_file=None).arq_queue_url()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Redis),
        ("redis+cluster://127.0.0.1:7000", RedisCluster),
        ("rediss+cluster://127.0.0.1:7000", RedisCluster),
    ],
)
async def test_redis_client_kind(
    monkeypatch: pytest.MonkeyPatch, url: str, kind: type[Any]
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    client = redis_client(load_settings(env_file=None))
    try:
        assert isinstance(client, kind)
    finally:
        await client.aclose()


def test_the_worker_stops_at_start_naming_the_variable() -> None:
    env = {**os.environ, "REDIS_URL": "redis+cluster://127.0.0.1:7000"}
    env.pop("CALLTAGS_QUEUE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", "import workers.flush"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "CALLTAGS_QUEUE_URL" in done.stderr


async def test_a_sentinel_url_makes_a_client_of_the_primary_they_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/main/3")
    client = redis_client(load_settings(env_file=None))
    try:
        assert isinstance(client, Redis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert (pool.service_name, pool.connection_kwargs["db"]) == ("main", 3)
    finally:
        await client.aclose()


def test_the_worker_queue_follows_sentinels_too() -> None:
    code = (
        "import workers.flush as f; p = f.WorkerSettings.redis_pool;"
        " print(type(p).__name__, p.connection_pool.service_name, p.default_queue_name)"
    )
    env = {**os.environ, "REDIS_URL": "redis+sentinel://127.0.0.1:1/main"}
    env.update(CALLTAGS_REDIS_PREFIX="ct:")
    env.pop("CALLTAGS_QUEUE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ArqRedis", "main", "ct:arq:queue"]
