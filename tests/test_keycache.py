"""KeyResolver on fakeredis: caching rules that do not depend on Lua."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from calltags.keycache import KeyResolver, hash_secret
from calltags.keys import KeySpace
from calltags.publishers import new_secret

KEYS = KeySpace("unit:", 4)


async def _mirror(redis: fakeredis.FakeAsyncRedis, secret: str, paused: int = 0) -> None:
    await redis.hset(
        KEYS.postback_key(hash_secret(secret)),
        mapping={"id": 7, "pub": 3, "cut": 3600, "sto": 86400, "pau": paused},
    )


def test_secrets_are_long_random_and_prefixed() -> None:
    secrets = {new_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    assert all(s.startswith("ct_") and len(s) >= 3 + 32 for s in secrets)
    assert hash_secret("ct_abc") != hash_secret("ct_abd")
    assert len(hash_secret("ct_abc")) == 64


async def test_resolves_from_the_mirror_and_records_use() -> None:
    redis = fakeredis.FakeAsyncRedis()
    secret = new_secret()
    await _mirror(redis, secret)
    resolver = KeyResolver(redis, KEYS, ttl=1.0)
    info = await resolver.resolve(secret)
    assert info is not None
    assert (info.id, info.publisher_id, info.cutoff_seconds, info.storage_seconds) == (
        7,
        3,
        3600,
        86400,
    )
    assert not info.paused
    assert set(resolver.take_used()) == {7}
    assert resolver.take_used() == {}


async def test_unknown_secret_is_none() -> None:
    resolver = KeyResolver(fakeredis.FakeAsyncRedis(), KEYS, ttl=1.0)
    assert await resolver.resolve("ct_nope") is None


@pytest.mark.parametrize("ttl", [0.2])
async def test_changes_are_seen_once_the_cache_entry_ages_out(ttl: float) -> None:
    redis = fakeredis.FakeAsyncRedis()
    secret = new_secret()
    await _mirror(redis, secret)
    resolver = KeyResolver(redis, KEYS, ttl=ttl)
    assert (await resolver.resolve(secret)) is not None
    await _mirror(redis, secret, paused=1)
    cached = await resolver.resolve(secret)
    assert cached is not None and not cached.paused  # still the cached entry
    await asyncio.sleep(ttl + 0.05)
    fresh = await resolver.resolve(secret)
    assert fresh is not None and fresh.paused
    await redis.delete(KEYS.postback_key(hash_secret(secret)))
    await asyncio.sleep(ttl + 0.05)
    assert await resolver.resolve(secret) is None
