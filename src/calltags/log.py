"""The postback log's Redis side: one entry per /data_writing request, in sharded streams.

Workers (`workers/`) move entries into Postgres and delete them only after the commit.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson
from redis.exceptions import RedisError

from calltags.errors import StoreUnavailable
from calltags.keys import KeySpace
from calltags.store import RedisClient

# Caps on what a rejected request may put in the log, so junk cannot flood it.
MAX_TEXT = 256  # chars of the raw caller number, user agent, call_uuid, tag names
MAX_TAG_VALUE = 1024  # chars of a logged tag value
MAX_LOGGED_TAGS = 100
ENTRY_FIELD = b"e"


def _cap(value: str | None, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[:limit]


def cap_tags(tags: dict[str, str]) -> dict[str, str]:
    capped: dict[str, str] = {}
    for name, value in itertools.islice(tags.items(), MAX_LOGGED_TAGS):
        capped[name[:MAX_TEXT]] = value[:MAX_TAG_VALUE]
    return capped


def make_entry(
    *,
    received_ms: int,
    method: str,
    publisher_id: int | None,
    key_id: int | None,
    key_prefix: str | None,
    caller_raw: str | None,
    caller_number: str | None,
    call_uuid: str | None,
    tags: dict[str, str],
    status: str | None,
    error: str | None,
    http_status: int,
    remote_addr: str | None,
    user_agent: str | None,
    latency_us: int,
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "received_at": received_ms,
        "method": method,
        "publisher_id": publisher_id,
        "key_id": key_id,
        "key_prefix": _cap(key_prefix, 16),
        "caller_raw": _cap(caller_raw),
        "caller_number": caller_number,
        "call_uuid": _cap(call_uuid),
        "tags": cap_tags(tags),
        "status": status,
        "error": error,
        "http_status": http_status,
        "remote_addr": _cap(remote_addr, 64),
        "user_agent": _cap(user_agent),
        "latency_us": latency_us,
    }


class PostbackLog:
    def __init__(self, redis: RedisClient, keys: KeySpace):
        self.redis = redis
        self.keys = keys
        self._shards = itertools.cycle(keys.log_shards_all())

    async def append(self, entry: dict[str, Any]) -> None:
        """Add one entry; StoreUnavailable if Redis did not take it."""
        try:
            await self.redis.xadd(next(self._shards), {ENTRY_FIELD: orjson.dumps(entry)})
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def backlog(self) -> int:
        """Entries in Redis not yet moved to Postgres, over all shards."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in self.keys.log_shards_all():
                    pipe.xlen(shard)
                lengths: list[int] = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return sum(lengths)
