"""Publishers and their postback keys: Postgres is the record, Redis the hot-path mirror."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from calltags.errors import StoreUnavailable
from calltags.keys import KeySpace
from calltags.store import REDIS_ERRORS, RedisClient
from calltags.times import iso

KEY_TYPES = ("call_data_writing",)
SECRET_BYTES = 24  # 192 bits of randomness per key
SECRET_PREFIX = "ct_"
SIGNING_PREFIX = "whsec_"
MAX_CIDRS = 100
CUTOFF_RANGE = (0, 2_592_000)
STORAGE_RANGE = (60, 2_592_000)
_CACHE_MAX_ENTRIES = 100_000  # past this the cache starts over rather than grow without bound

_KEY_COLUMNS = (
    "id, publisher_id, name, type, secret_hash, secret_prefix, end_call_cutoff_seconds,"
    " storage_duration_seconds, paused, revoked_at, created_at, last_used_at,"
    " previous_secret_hash, previous_valid_until, signing_secret, require_signature,"
    " allowed_cidrs, rate_limit_per_second, rate_limit_burst"
)
# Columns a PATCH may change.
UPDATABLE = (
    "name",
    "paused",
    "end_call_cutoff_seconds",
    "storage_duration_seconds",
    "require_signature",
    "allowed_cidrs",
    "rate_limit_per_second",
    "rate_limit_burst",
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_signing_secret() -> str:
    return SIGNING_PREFIX + secrets.token_urlsafe(32)


def parse_cidrs(values: Sequence[str]) -> list[Network]:
    """Networks from CIDR strings (a bare address is a /32 or /128); ValueError if bad."""
    if len(values) > MAX_CIDRS:
        raise ValueError(f"at most {MAX_CIDRS} networks")
    return [ipaddress.ip_network(value, strict=False) for value in values]


@dataclass(frozen=True)
class KeyInfo:
    """What the hot path needs to know about a postback key."""

    id: int
    publisher_id: int
    cutoff_seconds: int
    storage_seconds: int
    paused: bool
    rate_per_second: float | None = None  # None: CALLTAGS_RATE_LIMIT
    rate_burst: int | None = None
    require_signature: bool = False
    signing_secret: bytes = b""
    networks: tuple[Network, ...] = ()  # empty: any address

    def allows(self, address: str | None) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


class KeyNotFound(Exception):
    pass


class PublisherNotFound(Exception):
    pass


def publisher_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "created_at": iso(row["created_at"])}


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
        "revoked_at": iso(row["revoked_at"]),
        "created_at": iso(row["created_at"]),
        "last_used_at": iso(row["last_used_at"]),
        "previous_key_valid_until": iso(_previous_until(row)),
        "require_signature": row["require_signature"],
        "allowed_cidrs": [str(network) for network in row["allowed_cidrs"]],
        "rate_limit_per_second": row["rate_limit_per_second"],
        "rate_limit_burst": row["rate_limit_burst"],
    }


def _previous_until(row: asyncpg.Record) -> datetime | None:
    until: datetime | None = row["previous_valid_until"]
    if until is None or until <= datetime.now(UTC):
        return None
    return until


def _mirror_fields(row: asyncpg.Record) -> dict[str, str | int | float]:
    return {
        "id": row["id"],
        "pub": row["publisher_id"],
        "cut": row["end_call_cutoff_seconds"],
        "sto": row["storage_duration_seconds"],
        "pau": int(row["paused"]),
        "rps": row["rate_limit_per_second"] or 0,
        "rbu": row["rate_limit_burst"] or 0,
        "req": int(row["require_signature"]),
        "sig": row["signing_secret"],
        "net": ",".join(str(network) for network in row["allowed_cidrs"]),
    }


def _info(fields: dict[str, Any]) -> KeyInfo:
    """A KeyInfo from mirror fields (bytes from Redis, or the values _mirror_fields made).
    Fields a mirror written by an older release lacks take their defaults."""

    def text(name: str, default: str = "0") -> str:
        value = fields.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    networks = text("net", "")
    return KeyInfo(
        id=int(text("id")),
        publisher_id=int(text("pub")),
        cutoff_seconds=int(text("cut")),
        storage_seconds=int(text("sto")),
        paused=text("pau") == "1",
        rate_per_second=float(text("rps")) or None,
        rate_burst=int(text("rbu")) or None,
        require_signature=text("req") == "1",
        signing_secret=text("sig", "").encode(),
        networks=tuple(parse_cidrs(networks.split(","))) if networks else (),
    )


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
        **options: Any,
    ) -> tuple[dict[str, Any], str]:
        """A new key; (key, secret). The secret is returned here and never again; so is
        the key's `signing_secret`, which is in the key dict. `options` are UPDATABLE
        columns (require_signature, allowed_cidrs, rate limits)."""
        secret = new_secret()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "INSERT INTO postback_keys (publisher_id, name, type, secret_hash,"
                    " secret_prefix, end_call_cutoff_seconds, storage_duration_seconds,"
                    " signing_secret) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    publisher_id,
                    name,
                    key_type,
                    hash_secret(secret),
                    secret[: len(SECRET_PREFIX) + 4],
                    cutoff_seconds,
                    storage_seconds,
                    new_signing_secret(),
                )
                assert row is not None
                row = await self._update(conn, row["id"], options)
        except asyncpg.ForeignKeyViolationError as exc:
            raise PublisherNotFound(publisher_id) from exc
        assert row is not None
        await self._mirror(row)
        key = key_json(row)
        key["signing_secret"] = row["signing_secret"]
        return key, secret

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
        """Change any UPDATABLE column of a usable key."""
        async with self.pool.acquire() as conn:
            row = await self._update(conn, key_id, changes)
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row)
        return key_json(row)

    async def _update(
        self,
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        key_id: int,
        changes: dict[str, Any],
    ) -> asyncpg.Record | None:
        columns = [c for c in UPDATABLE if c in changes]
        if columns:
            assignments = ", ".join(f"{c} = ${n}" for n, c in enumerate(columns, start=2))
            sql = (
                f"UPDATE postback_keys SET {assignments} WHERE id = $1 AND revoked_at IS NULL"
                f" RETURNING {_KEY_COLUMNS}"
            )
        else:
            sql = f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE id = $1 AND revoked_at IS NULL"
        values = [parse_cidrs(changes[c]) if c == "allowed_cidrs" else changes[c] for c in columns]
        row: asyncpg.Record | None = await conn.fetchrow(sql, key_id, *values)
        return row

    async def rotate_key(self, key_id: int, grace_seconds: int) -> tuple[dict[str, Any], str]:
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
            secret[: len(SECRET_PREFIX) + 4],
        )
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row)
        return key_json(row), secret

    async def revoke_key(self, key_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "UPDATE postback_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
            f" RETURNING {_KEY_COLUMNS}",
            key_id,
        )
        if row is None:
            raise KeyNotFound(key_id)
        await self._mirror(row)
        return key_json(row)

    async def sync_mirror(self) -> int:
        """Write every key into Redis (after a Redis restart, say), then mark the mirror
        complete so that unknown keys need no Postgres lookup; how many keys."""
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM postback_keys WHERE revoked_at IS NULL"
        )
        for row in rows:
            await self._mirror(row)
        try:
            await self.redis.set(self.keys.mirror_complete(), "1")
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
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
        return _info(_mirror_fields(row))

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
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if row["revoked_at"] is not None:
                    pipe.delete(current)
                    if previous:
                        pipe.delete(previous)
                else:
                    # Every field is written each time, so nothing stale remains, and a
                    # reader never sees the key missing mid-update.
                    fields = _mirror_fields(row)
                    pipe.hset(current, mapping=fields)
                    if previous and until is not None:
                        pipe.hset(previous, mapping=fields)
                        pipe.pexpireat(previous, int(until.timestamp() * 1000))
                    elif previous:
                        pipe.delete(previous)
                await pipe.execute()
        except REDIS_ERRORS as exc:
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
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        if fields:
            return _info({name.decode(): value for name, value in fields.items()})
        if self.fallback is None:
            return None
        try:
            if await self.redis.exists(self.keys.mirror_complete()):
                return None  # the mirror holds every key: no need to ask Postgres
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            return await self.fallback.lookup(secret_hash)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def take_used(self) -> dict[int, float]:
        used, self.used = self.used, {}
        return used

    def cached(self, secret: str) -> KeyInfo | None:
        """The key if this process already knows it as usable; no I/O."""
        hit = self._cache.get(secret)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None


class GuessGuard:
    """Slows key guessing: an address with more than `per_minute` failed key attempts in
    a minute (counted in Redis, over every web process) is refused (429) until the
    minute ends, unless it presents a key this process knows to be good."""

    WINDOW_MS = 60_000

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._blocked: dict[str, float] = {}  # address -> monotonic time the block ends

    def blocked_for(self, address: str) -> float:
        """Seconds the address stays blocked; 0 if it is not."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    def record(self, address: str, attempts: int, window_left_ms: int) -> None:
        """Note the attempts counted for the address; block it once past the limit."""
        if self.per_minute and attempts > self.per_minute:
            if len(self._blocked) >= _CACHE_MAX_ENTRIES:
                self._blocked.clear()
            self._blocked[address] = time.monotonic() + max(window_left_ms, 1) / 1000
