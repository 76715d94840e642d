"""Publishers and their postback keys: Postgres is the record, Redis the hot-path mirror."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from calltags.errors import StoreUnavailable
from calltags.keys import KeySpace
from calltags.store import RedisClient

KEY_TYPES = ("call_data_writing",)
SECRET_BYTES = 24  # 192 bits of randomness per key
SECRET_PREFIX = "ct_"
CUTOFF_RANGE = (0, 2_592_000)
STORAGE_RANGE = (60, 2_592_000)
_CACHE_MAX_ENTRIES = 100_000  # past this the cache starts over rather than grow without bound

_KEY_COLUMNS = (
    "id, publisher_id, name, type, secret_prefix, end_call_cutoff_seconds,"
    " storage_duration_seconds, paused, revoked_at, created_at, last_used_at"
)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


@dataclass(frozen=True)
class KeyInfo:
    """What the hot path needs to know about a postback key."""

    id: int
    publisher_id: int
    cutoff_seconds: int
    storage_seconds: int
    paused: bool


class KeyNotFound(Exception):
    pass


class PublisherNotFound(Exception):
    pass


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def publisher_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "created_at": _iso(row["created_at"])}


def key_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "publisher_id": row["publisher_id"],
        "name": row["name"],
        "type": row["type"],
        "key_prefix": row["secret_prefix"],
        "end_call_cutoff_seconds": row["end_call_cutoff_seconds"],
        "storage_duration_seconds": row["storage_duration_seconds"],
        "paused": row["paused"],
        "revoked": row["revoked_at"] is not None,
        "revoked_at": _iso(row["revoked_at"]),
        "created_at": _iso(row["created_at"]),
        "last_used_at": _iso(row["last_used_at"]),
    }


def _mirror_fields(row: asyncpg.Record) -> dict[str, str | int]:
    return {
        "id": row["id"],
        "pub": row["publisher_id"],
        "cut": row["end_call_cutoff_seconds"],
        "sto": row["storage_duration_seconds"],
        "pau": int(row["paused"]),
    }


class Publishers:
    def __init__(self, pool: asyncpg.Pool, redis: RedisClient, keys: KeySpace):
        self.pool = pool
        self.redis = redis
        self.keys = keys

    async def create_publisher(self, name: str) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "INSERT INTO publishers (name) VALUES ($1) RETURNING id, name, created_at", name
        )
        assert row is not None
        return publisher_json(row)

    async def list_publishers(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT id, name, created_at FROM publishers ORDER BY id")
        return [publisher_json(r) for r in rows]

    async def create_key(
        self,
        publisher_id: int,
        name: str,
        key_type: str = "call_data_writing",
        cutoff_seconds: int = 3600,
        storage_seconds: int = 86400,
    ) -> tuple[dict[str, Any], str]:
        """A new key; (key, secret). The secret is returned here and never again."""
        secret = new_secret()
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO postback_keys (publisher_id, name, type, secret_hash, secret_prefix,"
                " end_call_cutoff_seconds, storage_duration_seconds)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_KEY_COLUMNS}",
                publisher_id,
                name,
                key_type,
                hash_secret(secret),
                secret[: len(SECRET_PREFIX) + 4],
                cutoff_seconds,
                storage_seconds,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise PublisherNotFound(publisher_id) from exc
        assert row is not None
        await self._mirror(hash_secret(secret), row)
        return key_json(row), secret

    async def list_keys(self, publisher_id: int) -> list[dict[str, Any]]:
        if not await self.pool.fetchval("SELECT 1 FROM publishers WHERE id = $1", publisher_id):
            raise PublisherNotFound(publisher_id)
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE publisher_id = $1 ORDER BY id",
            publisher_id,
        )
        return [key_json(r) for r in rows]

    async def get_key(self, key_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE id = $1", key_id
        )
        if row is None:
            raise KeyNotFound(key_id)
        return key_json(row)

    async def update_key(self, key_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Change `name`, `paused`, `end_call_cutoff_seconds`, `storage_duration_seconds`."""
        allowed = ("name", "paused", "end_call_cutoff_seconds", "storage_duration_seconds")
        columns = [c for c in allowed if c in changes]
        assignments = ", ".join(f"{c} = ${n}" for n, c in enumerate(columns, start=2))
        if columns:
            sql = (
                f"UPDATE postback_keys SET {assignments} WHERE id = $1 AND revoked_at IS NULL"
                f" RETURNING {_KEY_COLUMNS}, secret_hash"
            )
        else:
            sql = (
                f"SELECT {_KEY_COLUMNS}, secret_hash FROM postback_keys"
                " WHERE id = $1 AND revoked_at IS NULL"
            )
        row = await self.pool.fetchrow(sql, key_id, *(changes[c] for c in columns))
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row["secret_hash"], row)
        return key_json(row)

    async def revoke_key(self, key_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "UPDATE postback_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
            f" RETURNING {_KEY_COLUMNS}, secret_hash",
            key_id,
        )
        if row is None:
            raise KeyNotFound(key_id)
        try:
            await self.redis.delete(self.keys.postback_key(row["secret_hash"]))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return key_json(row)

    async def sync_mirror(self) -> int:
        """Write every usable key into Redis (after a Redis restart, say); how many."""
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS}, secret_hash FROM postback_keys WHERE revoked_at IS NULL"
        )
        for row in rows:
            await self._mirror(row["secret_hash"], row)
        return len(rows)

    async def lookup(self, secret_hash: str) -> KeyInfo | None:
        """The key with this hash from Postgres, re-mirrored into Redis; None if unusable."""
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys"
            " WHERE secret_hash = $1 AND revoked_at IS NULL",
            secret_hash,
        )
        if row is None:
            return None
        await self._mirror(secret_hash, row)
        return KeyInfo(
            id=row["id"],
            publisher_id=row["publisher_id"],
            cutoff_seconds=row["end_call_cutoff_seconds"],
            storage_seconds=row["storage_duration_seconds"],
            paused=row["paused"],
        )

    async def touch(self, used: dict[int, float]) -> None:
        """Record last_used_at for keys that served postbacks (times in epoch seconds)."""
        if not used:
            return
        await self.pool.executemany(
            "UPDATE postback_keys SET last_used_at = greatest(last_used_at, to_timestamp($2))"
            " WHERE id = $1",
            list(used.items()),
        )

    async def _mirror(self, secret_hash: str, row: asyncpg.Record) -> None:
        name = self.keys.postback_key(secret_hash)
        try:
            if row["revoked_at"] is not None:
                await self.redis.delete(name)
            else:
                await self.redis.hset(name, mapping=_mirror_fields(row))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc


class KeyResolver:
    """Secret -> KeyInfo for the hot path: in-process cache (<= 1 s), then Redis, then Postgres.

    Entries live at most `ttl` seconds, so a pause or a revoke takes effect within it.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        ttl: float,
        fallback: Publishers | None = None,
    ):
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.fallback = fallback
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}
        self.used: dict[int, float] = {}

    async def resolve(self, secret: str) -> KeyInfo | None:
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit is not None and hit[0] > now:
            info = hit[1]
        else:
            info = await self._load(secret)
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[secret] = (now + self.ttl, info)
        if info is not None:
            self.used[info.id] = time.time()
        return info

    async def _load(self, secret: str) -> KeyInfo | None:
        secret_hash = hash_secret(secret)
        try:
            fields = await self.redis.hgetall(self.keys.postback_key(secret_hash))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if fields:
            return KeyInfo(
                id=int(fields[b"id"]),
                publisher_id=int(fields[b"pub"]),
                cutoff_seconds=int(fields[b"cut"]),
                storage_seconds=int(fields[b"sto"]),
                paused=fields[b"pau"] == b"1",
            )
        if self.fallback is None:
            return None
        try:
            return await self.fallback.lookup(secret_hash)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def take_used(self) -> dict[int, float]:
        used, self.used = self.used, {}
        return used
