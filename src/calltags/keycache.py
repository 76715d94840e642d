"""What the hot path knows of a postback key: `KeyInfo`, its mirror in Redis (one hash
per secret hash, written by `publishers` whenever a key's row changes), and
`KeyResolver`, which finds a presented secret's key: in-process cache (<= 1 s), then
the mirror, then Postgres while the mirror is incomplete."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from calltags.db import POSTGRES_ERRORS
from calltags.errors import StoreBoundary
from calltags.keys import KeySpace
from calltags.store import REDIS_ERRORS, RedisClient

if TYPE_CHECKING:
    from calltags.publishers import Publishers

CACHE_MAX_ENTRIES = 100_000  # past this a cache starts over rather than grow without bound
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_cidrs(values: Sequence[str]) -> list[Network]:
    """Networks from CIDR strings (a bare address is a /32 or /128); ValueError if bad."""
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
    tag_schema: str | None = None  # the name of the tag schema its tags must fit

    def allows(self, address: str | None) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def mirror_fields(row: asyncpg.Record) -> dict[str, str | int | float]:
    """The mirror hash of a `postback_keys` row."""
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
        "tsc": row["tag_schema"] or "",
    }


def key_info(fields: dict[str, Any]) -> KeyInfo:
    """A KeyInfo from mirror fields (bytes from Redis, or what mirror_fields made).
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
        tag_schema=text("tsc", "") or None,
    )


class KeyResolver(StoreBoundary):
    """Secret -> KeyInfo for the hot path: in-process cache (<= 1 s), then Redis, then
    Postgres. Entries live at most `ttl` seconds, so a pause or a revoke takes effect
    within it."""

    driver_errors = (*REDIS_ERRORS, *POSTGRES_ERRORS)

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

    async def resolve(self, secret: str, fallback: bool = True) -> KeyInfo | None:
        """The key of `secret`; `fallback`: ask Postgres too while the mirror is
        incomplete (not for an address that keeps presenting unknown keys)."""
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit is not None and hit[0] > now:
            info = hit[1]
        else:
            info = await self._load(secret, fallback)
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[secret] = (now + self.ttl, info)
        if info is not None:
            self.used[info.id] = time.time()
        return info

    async def _load(self, secret: str, fallback: bool) -> KeyInfo | None:
        secret_hash = hash_secret(secret)
        fields = await self.redis.hgetall(self.keys.postback_key(secret_hash))
        if fields:
            return key_info({name.decode(): value for name, value in fields.items()})
        if self.fallback is None or not fallback:
            return None
        if await self.redis.exists(self.keys.mirror_complete()):
            return None  # the mirror holds every key: no need to ask Postgres
        return await self.fallback.lookup(secret_hash)

    def take_used(self) -> dict[int, float]:
        used, self.used = self.used, {}
        return used

    def cached(self, secret: str) -> KeyInfo | None:
        """The key if this process already knows it as usable; no I/O."""
        hit = self._cache.get(secret)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None
