"""The postback log's Redis side: one entry per /data_writing request, in sharded streams.

Workers (`workers/`, `calltags.sink`) move entries into Postgres and delete them only
after the commit. While more than CALLTAGS_LOG_MAX_BACKLOG entries wait, the web process
refuses postbacks (503) instead of accepting them: `PostbackLog.watch` measures the
backlog in the background, so the hot path only reads a flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from calltags.errors import StoreUnavailable
from calltags.ids import random_uuid
from calltags.keys import KeySpace
from calltags.store import ENTRY_FIELD as ENTRY_FIELD
from calltags.store import REDIS_ERRORS, RedisClient
from calltags.times import now_ms

# Caps on what a rejected request may put in the log, so junk cannot flood it.
MAX_TEXT = 256  # chars of the raw caller number, user agent, call_uuid, tag names
MAX_TAG_VALUE = 1024  # chars of a logged tag value
MAX_LOGGED_TAGS = 100
MAX_MESSAGE = 512  # chars of a refusal's message


def _cap(value: str | None, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[:limit]


def cap_tags(tags: dict[str, str]) -> dict[str, str]:
    capped: dict[str, str] = {}
    for name, value in itertools.islice(tags.items(), MAX_LOGGED_TAGS):
        capped[name[:MAX_TEXT]] = value[:MAX_TAG_VALUE]
    return capped


_HEAD_FIELDS = ("method", "publisher_id", "key_id", "key_prefix", "remote_addr", "user_agent")


def make_entry(**fields: Any) -> dict[str, Any]:
    """An entry as a dict, what the log holds read back (tests and benches make entries
    with it): EntryHead's fields and EntryHead.encode's, by name."""
    head = EntryHead(**{name: fields.pop(name) for name in _HEAD_FIELDS})
    entry: dict[str, Any] = orjson.loads(head.encode(**fields))
    return entry


class _Entry(msgspec.Struct):
    """A postback log entry, its fields in their order (a Struct: encoded in about half
    the time of a dict through orjson)."""

    id: str
    received_at: int
    method: str
    publisher_id: int | None
    key_id: int | None
    key_prefix: str | None
    caller_raw: str | None
    caller_number: str | None
    call_uuid: str | None
    tags: dict[str, str]
    status: str | None
    error: str | None
    message: str | None
    http_status: int
    remote_addr: str | None
    user_agent: str | None
    latency_us: int
    replayed: bool
    call: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET  # the call's JSON, as it is


_encode = msgspec.json.Encoder().encode


class EntryHead:
    """The fields of a log entry that the postbacks of one request share (the request's
    method, key, address and user agent), capped once for them all."""

    __slots__ = ("key_id", "key_prefix", "method", "publisher_id", "remote_addr", "user_agent")

    def __init__(
        self,
        *,
        method: str,
        publisher_id: int | None,
        key_id: int | None,
        key_prefix: str | None,
        remote_addr: str | None,
        user_agent: str | None,
    ):
        self.method = method
        self.publisher_id = publisher_id
        self.key_id = key_id
        self.key_prefix = _cap(key_prefix, 16)
        self.remote_addr = _cap(remote_addr, 64)
        self.user_agent = _cap(user_agent)

    def encode(
        self,
        *,
        received_ms: int,
        caller_raw: str | None,
        caller_number: str | None,
        call_uuid: str | None,
        tags: dict[str, str],
        status: str | None,
        error: str | None,
        http_status: int,
        message: str | None = None,
        latency_us: int,
        call: bytes | None = None,
        tags_checked: bool = False,
        replayed: bool = False,
    ) -> bytes:
        """One postback's entry, JSON; `call` is the JSON of the call the post applied
        tags to, which the workers turn into the call's record. `tags_checked`: the tags
        passed the postback's own rules, which are stricter than the log's caps, so they
        are logged as they are. `replayed`: a repeat of an idempotent postback, answered
        with the first one's answer (nothing written)."""
        return _encode(
            _Entry(
                random_uuid(),
                received_ms,
                self.method,
                self.publisher_id,
                self.key_id,
                self.key_prefix,
                _cap(caller_raw),
                caller_number,
                _cap(call_uuid),
                tags if tags_checked else cap_tags(tags),
                status,
                error,
                _cap(message, MAX_MESSAGE),
                http_status,
                self.remote_addr,
                self.user_agent,
                latency_us,
                replayed,
                msgspec.Raw(call) if call is not None else msgspec.UNSET,
            )
        )


def stream_id_ms(entry_id: bytes | str) -> int:
    """The time a stream entry was added, from its ID ("1700000000000-0"), ms."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


@dataclass(frozen=True)
class Backlog:
    """What waits in Redis for the workers, as last measured."""

    postbacks: int = 0  # entries in the postback log shards
    calls: int = 0  # call snapshots in the call log shards
    oldest_ms: int | None = None  # when the oldest waiting entry was added, epoch ms
    measured_ms: int = 0

    @property
    def total(self) -> int:
        return self.postbacks + self.calls

    def oldest_age_seconds(self, at_ms: int | None = None) -> float:
        if self.oldest_ms is None:
            return 0.0
        return max(0, (now_ms() if at_ms is None else at_ms) - self.oldest_ms) / 1000


class PostbackLog:
    def __init__(self, redis: RedisClient, keys: KeySpace, max_backlog: int = 1_000_000):
        self.redis = redis
        self.keys = keys
        self.max_backlog = max_backlog
        self.last = Backlog()
        self.refused = 0  # postbacks refused because the backlog was full

    @property
    def full(self) -> bool:
        """True while the last measured backlog is at CALLTAGS_LOG_MAX_BACKLOG or above."""
        return self.last.total >= self.max_backlog

    async def measure(self) -> Backlog:
        """Length and oldest entry of every postback and call log shard, one round trip."""
        postback_shards = self.keys.log_shards_all()
        streams = postback_shards + self.keys.call_log_shards_all()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xlen(stream)
                    pipe.xrange(stream, count=1)
                replies: list[Any] = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        lengths: list[int] = replies[0::2]
        firsts = [stream_id_ms(first[0][0]) for first in replies[1::2] if first]
        split = len(postback_shards)
        return Backlog(
            postbacks=sum(lengths[:split]),
            calls=sum(lengths[split:]),
            oldest_ms=min(firsts) if firsts else None,
            measured_ms=now_ms(),
        )

    async def watch(self, interval: float) -> None:
        """Measure the backlog every `interval` seconds, for `full`, /readyz and /metrics."""
        while True:
            # While Redis is down, appends fail (503) anyway: keep the last measure.
            with contextlib.suppress(StoreUnavailable):
                self.last = await self.measure()
            await asyncio.sleep(interval)
