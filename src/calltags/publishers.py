"""Publishers and their postback keys: Postgres is the record; every change of a key's
row is mirrored into Redis for the hot path (`keycache`). Postgres and Redis errors
become StoreUnavailable at this boundary."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg

from calltags.db import POSTGRES_ERRORS
from calltags.errors import StoreBoundary
from calltags.keycache import KeyInfo, hash_secret, key_info, mirror_fields, parse_cidrs
from calltags.keys import KeySpace
from calltags.models import Key, KeyCreate, KeyUpdate, Publisher, PublisherUpdate, from_row
from calltags.store import REDIS_ERRORS, RedisClient
from calltags.tagschemas import TagSchemaNotFound
from calltags.times import iso

SECRET_BYTES = 24  # 192 bits of randomness per key
SECRET_PREFIX = "ct_"
SIGNING_PREFIX = "whsec_"
_SHOWN_PREFIX = len(SECRET_PREFIX) + 4  # characters of a secret kept to tell keys apart

_KEY_COLUMNS = (
    "id, publisher_id, name, type, secret_hash, secret_prefix, end_call_cutoff_seconds,"
    " storage_duration_seconds, paused, revoked_at, created_at, last_used_at,"
    " previous_secret_hash, previous_valid_until, signing_secret, require_signature,"
    " allowed_cidrs, rate_limit_per_second, rate_limit_burst, tag_schema"
)
# The settings a key is created with beyond its name, type and secrets; a PATCH may
# change these and the name and paused flag.
_SETTINGS = (
    "end_call_cutoff_seconds",
    "storage_duration_seconds",
    "require_signature",
    "allowed_cidrs",
    "rate_limit_per_second",
    "rate_limit_burst",
    "tag_schema",
)
_UPDATABLE = ("name", "paused", *_SETTINGS)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_signing_secret() -> str:
    return SIGNING_PREFIX + secrets.token_urlsafe(32)


EXAMPLE_CALLER = "+15551234567"


def example_url(base: str, secret: str, caller: str = EXAMPLE_CALLER) -> str:
    """A postback URL ready to send with the key, for a publisher to start from; `caller`
    may be a placeholder the publisher replaces (the console writes CALLER_NUMBER)."""
    return (
        f"{base.rstrip('/')}/data_writing?key={quote(secret)}"
        f"&caller_number={quote(caller)}&prequalified=true"
    )


def key_model(row: asyncpg.Record) -> Key:
    return from_row(
        Key,
        row,
        key_prefix=row["secret_prefix"],
        revoked=row["revoked_at"] is not None,
        previous_key_valid_until=iso(_previous_until(row)),
        allowed_cidrs=[str(network) for network in row["allowed_cidrs"]],
    )


def _previous_until(row: asyncpg.Record) -> datetime | None:
    until: datetime | None = row["previous_valid_until"]
    if until is None or until <= datetime.now(UTC):
        return None
    return until


class KeyNotFound(Exception):
    pass


class PublisherNotFound(Exception):
    pass


_TAG_SCHEMA_FKEY = "postback_keys_tag_schema_fkey"  # migration 008


class Publishers(StoreBoundary):
    driver_errors = (*POSTGRES_ERRORS, *REDIS_ERRORS)

    def __init__(self, pool: asyncpg.Pool, redis: RedisClient, keys: KeySpace):
        self.pool = pool
        self.redis = redis
        self.keys = keys

    async def create_publisher(self, name: str) -> Publisher:
        row = await self.pool.fetchrow(
            "INSERT INTO publishers (name) VALUES ($1) RETURNING id, name, created_at", name
        )
        assert row is not None
        return from_row(Publisher, row)

    async def list_publishers(self) -> list[Publisher]:
        rows = await self.pool.fetch("SELECT id, name, created_at FROM publishers ORDER BY id")
        return [from_row(Publisher, r) for r in rows]

    async def get_publisher(self, publisher_id: int) -> Publisher:
        row = await self.pool.fetchrow(
            "SELECT id, name, created_at FROM publishers WHERE id = $1", publisher_id
        )
        if row is None:
            raise PublisherNotFound(publisher_id)
        return from_row(Publisher, row)

    async def update_publisher(self, publisher_id: int, update: PublisherUpdate) -> Publisher:
        """Change the fields `update` gives (the name)."""
        name = update.changes().get("name")
        if name is None:
            return await self.get_publisher(publisher_id)
        row = await self.pool.fetchrow(
            "UPDATE publishers SET name = $2 WHERE id = $1 RETURNING id, name, created_at",
            publisher_id,
            name,
        )
        if row is None:
            raise PublisherNotFound(publisher_id)
        return from_row(Publisher, row)

    async def create_key(self, publisher_id: int, new: KeyCreate) -> tuple[Key, str, str]:
        """A new key; (key, secret, signing secret). The two secrets are returned here
        and never again."""
        secret = new_secret()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "INSERT INTO postback_keys (publisher_id, name, type, secret_hash,"
                    " secret_prefix, signing_secret) VALUES ($1, $2, $3, $4, $5, $6)"
                    " RETURNING id",
                    publisher_id,
                    new.name,
                    new.type,
                    hash_secret(secret),
                    secret[:_SHOWN_PREFIX],
                    new_signing_secret(),
                )
                assert row is not None
                row = await self._update(
                    conn, row["id"], {name: getattr(new, name) for name in _SETTINGS}
                )
        except asyncpg.ForeignKeyViolationError as exc:
            raise PublisherNotFound(publisher_id) from exc
        assert row is not None
        await self._mirror(row)
        return key_model(row), secret, row["signing_secret"]

    async def list_keys(self, publisher_id: int) -> list[Key]:
        if not await self.pool.fetchval("SELECT 1 FROM publishers WHERE id = $1", publisher_id):
            raise PublisherNotFound(publisher_id)
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE publisher_id = $1 ORDER BY id",
            publisher_id,
        )
        return [key_model(r) for r in rows]

    async def get_key(self, key_id: int) -> Key:
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE id = $1", key_id
        )
        if row is None:
            raise KeyNotFound(key_id)
        return key_model(row)

    async def keys_by_id(self, key_ids: Iterable[int]) -> dict[int, Key]:
        """The keys of these ids (revoked ones included) that exist, by id."""
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE id = ANY($1::bigint[])",
            sorted(set(key_ids)),
        )
        return {row["id"]: key_model(row) for row in rows}

    async def key_info(self, key_id: int) -> KeyInfo | None:
        """What the hot path knows of the usable key `key_id`; None if there is none."""
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE id = $1 AND revoked_at IS NULL",
            key_id,
        )
        return key_info(mirror_fields(row)) if row is not None else None

    async def update_key(self, key_id: int, update: KeyUpdate) -> Key:
        """Change the fields `update` gives of a usable key."""
        async with self.pool.acquire() as conn:
            row = await self._update(conn, key_id, update.changes())
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row)
        return key_model(row)

    @staticmethod
    async def _update(
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        key_id: int,
        changes: dict[str, Any],
    ) -> asyncpg.Record | None:
        columns = [c for c in _UPDATABLE if c in changes]
        if columns:
            assignments = ", ".join(f"{c} = ${n}" for n, c in enumerate(columns, start=2))
            sql = (
                f"UPDATE postback_keys SET {assignments} WHERE id = $1 AND revoked_at IS NULL"
                f" RETURNING {_KEY_COLUMNS}"
            )
        else:
            sql = f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE id = $1 AND revoked_at IS NULL"
        values = [parse_cidrs(changes[c]) if c == "allowed_cidrs" else changes[c] for c in columns]
        try:
            row: asyncpg.Record | None = await conn.fetchrow(sql, key_id, *values)
        except asyncpg.ForeignKeyViolationError as exc:
            if exc.constraint_name != _TAG_SCHEMA_FKEY:
                raise
            raise TagSchemaNotFound(changes["tag_schema"]) from exc
        return row

    async def rotate_key(self, key_id: int, grace_seconds: int) -> tuple[Key, str]:
        """A new secret for the key; the old one keeps working for `grace_seconds`."""
        secret = new_secret()
        row = await self.pool.fetchrow(
            "UPDATE postback_keys SET previous_secret_hash = secret_hash,"
            " previous_valid_until = now() + make_interval(secs => $3),"
            " secret_hash = $2, secret_prefix = $4"
            f" WHERE id = $1 AND revoked_at IS NULL RETURNING {_KEY_COLUMNS}",
            key_id,
            hash_secret(secret),
            grace_seconds,
            secret[:_SHOWN_PREFIX],
        )
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row)
        return key_model(row), secret

    async def revoke_key(self, key_id: int) -> Key:
        row = await self.pool.fetchrow(
            "UPDATE postback_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
            f" RETURNING {_KEY_COLUMNS}",
            key_id,
        )
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row)
        return key_model(row)

    async def sync_mirror(self) -> int:
        """Write every key into Redis (after a Redis restart, say), then mark the mirror
        complete so that unknown keys need no Postgres lookup; how many keys."""
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE revoked_at IS NULL"
        )
        for row in rows:
            await self._mirror(row)
        await self.redis.set(self.keys.mirror_complete(), "1")
        return len(rows)

    async def lookup(self, secret_hash: str) -> KeyInfo | None:
        """The key with this hash (or a rotated-out hash still in its grace period) from
        Postgres, mirrored again into Redis; None if unusable."""
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE revoked_at IS NULL AND"
            " (secret_hash = $1 OR (previous_secret_hash = $1 AND previous_valid_until > now()))",
            secret_hash,
        )
        if row is None:
            return None
        await self._mirror(row)
        return key_info(mirror_fields(row))

    async def touch(self, used: dict[int, float]) -> None:
        """Record last_used_at for keys that served postbacks (times in epoch seconds)."""
        if not used:
            return
        await self.pool.executemany(
            "UPDATE postback_keys SET last_used_at = greatest(last_used_at, to_timestamp($2))"
            " WHERE id = $1",
            list(used.items()),
        )

    async def _mirror(self, row: asyncpg.Record) -> None:
        """Make Redis agree with the key's row: its hash (and a rotated-out hash until its
        grace period ends) maps to its settings, or nothing once revoked."""
        current = self.keys.postback_key(row["secret_hash"])
        previous = (
            self.keys.postback_key(row["previous_secret_hash"])
            if row["previous_secret_hash"]
            else None
        )
        until = _previous_until(row)
        async with self.redis.pipeline(transaction=False) as pipe:
            if row["revoked_at"] is not None:
                pipe.delete(current)
                if previous:
                    pipe.delete(previous)
            else:
                # Every field is written each time, so nothing stale remains, and a
                # reader never sees the key missing mid-update.
                fields = mirror_fields(row)
                pipe.hset(current, mapping=fields)
                if previous and until is not None:
                    pipe.hset(previous, mapping=fields)
                    pipe.pexpireat(previous, int(until.timestamp() * 1000))
                elif previous:
                    pipe.delete(previous)
            await pipe.execute()
