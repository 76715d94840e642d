"""Redis: the Lua scripts, and the one place that turns their codes into results."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeAlias

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from calltags.errors import StoreUnavailable
from calltags.keys import SECOND_MS, KeySpace

# A single-node or cluster client: the two share the command API calltags uses.
RedisClient: TypeAlias = Redis | RedisCluster

STATUS_STORED = "call not found, tags stored"
STATUS_LIVE = "call in progress, tags applied"
STATUS_COMPLETED = "completed call found, tags applied"
_POSTBACK_STATUS = {0: STATUS_STORED, 1: STATUS_LIVE, 2: STATUS_COMPLETED}
SNAPSHOT_FIELD = b"c"  # the field of a call snapshot (the call's JSON) in {prefix}calllog:{N}


def _load_script(name: str) -> str:
    return resources.files("calltags").joinpath("lua", name).read_text(encoding="utf-8")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TagSource:
    publisher_id: int
    key_id: int
    set_at_ms: int


@dataclass(frozen=True)
class Call:
    call_uuid: str
    caller_number: str
    state: str
    started_ms: int
    ended_ms: int | None
    publisher_id: str | None
    campaign: str | None
    tags: dict[str, str]
    sources: dict[str, TagSource] = field(default_factory=dict)
    version: int = 0  # counts the call's writes: of two snapshots the higher is newer


@dataclass(frozen=True)
class PostbackResult:
    status: str
    call_uuid: str | None = None
    expires_at_ms: int | None = None
    call_json: bytes | None = None  # the call the tags were applied to, as now stored


class CallNotFound(Exception):
    pass


def encode_tag(value: str, publisher_id: int, key_id: int, set_at_ms: int) -> str:
    return f"{publisher_id}:{key_id}:{set_at_ms}|{value}"


def decode_tag(raw: str) -> tuple[str, TagSource]:
    source, _, value = raw.partition("|")
    publisher_id, key_id, set_at = source.split(":")
    return value, TagSource(int(publisher_id), int(key_id), int(set_at))


def decode_call(raw: bytes | str) -> Call:
    return call_from_doc(orjson.loads(raw))


def call_from_doc(doc: dict[str, Any]) -> Call:
    """A call from its parsed JSON (the format is in lua/connect-2.lua)."""
    tags: dict[str, str] = {}
    sources: dict[str, TagSource] = {}
    for name, packed in doc["t"].items():
        tags[name], sources[name] = decode_tag(packed)
    ended = doc.get("e")
    return Call(
        call_uuid=doc["u"],
        caller_number=doc["n"],
        state=doc["s"],
        started_ms=int(doc["b"]),
        ended_ms=int(ended) if ended else None,
        publisher_id=doc.get("p") or None,
        campaign=doc.get("c") or None,
        tags=tags,
        sources=sources,
        version=int(doc.get("v") or 0),
    )


class Store:
    """Tag writes, connects and call reads, each one Lua call on one caller's keys."""

    def __init__(self, redis: RedisClient, keys: KeySpace, call_ttl_seconds: int):
        self.redis = redis
        self.keys = keys
        self.call_ttl_ms = call_ttl_seconds * SECOND_MS
        self._postback: AsyncScript = redis.register_script(_load_script("postback-2.lua"))
        self._connect: AsyncScript = redis.register_script(_load_script("connect-2.lua"))
        self._end: AsyncScript = redis.register_script(_load_script("end-1.lua"))
        self._snapshot_shards = itertools.cycle(keys.call_log_shards_all())

    async def write_tags(
        self,
        caller: str,
        tags: dict[str, str],
        *,
        publisher_id: int,
        key_id: int,
        cutoff_seconds: int,
        storage_seconds: int,
        call_uuid: str = "",
        at_ms: int | None = None,
    ) -> PostbackResult:
        """Apply tags to the caller's live or recent call, or keep them pending.

        With `call_uuid`, the post addresses that call; CallNotFound if the caller has none.
        """
        now = now_ms() if at_ms is None else at_ms
        args: list[str | int] = [
            now,
            cutoff_seconds * SECOND_MS,
            storage_seconds * SECOND_MS,
            self.call_ttl_ms,
            call_uuid,
        ]
        for name, value in tags.items():
            args.append(name)
            args.append(encode_tag(value, publisher_id, key_id, now))
        try:
            code, detail, *call_json = await self._postback(
                keys=[self.keys.pending(caller), self.keys.calls(caller)], args=args
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if code < 0:
            raise CallNotFound(call_uuid)
        if code == 0:
            return PostbackResult(STATUS_STORED, expires_at_ms=int(detail))
        return PostbackResult(
            _POSTBACK_STATUS[code],
            call_uuid=detail.decode(),
            call_json=call_json[0] if call_json else None,
        )

    async def connect(
        self,
        caller: str,
        call_uuid: str,
        *,
        publisher_id: str | None = None,
        campaign: str | None = None,
    ) -> tuple[Call, bool]:
        """Start a live call claiming the caller's pending tags; (call, created)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.call_index(call_uuid), caller, px=self.call_ttl_ms)
                await self._connect(
                    keys=[self.keys.pending(caller), self.keys.calls(caller)],
                    args=[
                        call_uuid,
                        now_ms(),
                        self.call_ttl_ms,
                        caller,
                        publisher_id or "",
                        campaign or "",
                    ],
                    client=pipe,
                )
                _, (code, raw) = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        await self._record(raw)
        return decode_call(raw), code == 0

    async def caller_of(self, call_uuid: str) -> str | None:
        try:
            raw = await self.redis.get(self.keys.call_index(call_uuid))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return raw.decode() if raw is not None else None

    async def get_call(self, call_uuid: str) -> Call:
        caller = await self.caller_of(call_uuid)
        if caller is None:
            raise CallNotFound(call_uuid)
        try:
            raw = await self.redis.hget(self.keys.calls(caller), call_uuid)
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if raw is None:
            raise CallNotFound(call_uuid)
        return decode_call(raw)

    async def end_call(self, call_uuid: str) -> tuple[Call, bool]:
        """Complete a call; (call, ended_now). CallNotFound for an unknown call."""
        caller = await self.caller_of(call_uuid)
        if caller is None:
            raise CallNotFound(call_uuid)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._end(
                    keys=[self.keys.calls(caller)],
                    args=[call_uuid, now_ms(), self.call_ttl_ms],
                    client=pipe,
                )
                pipe.pexpire(self.keys.call_index(call_uuid), self.call_ttl_ms)
                (code, raw), _ = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if code < 0:
            raise CallNotFound(call_uuid)
        await self._record(raw)
        return decode_call(raw), code == 0

    async def _record(self, call_json: bytes) -> None:
        """Queue a call snapshot for the call records in Postgres (see workers/).

        Also after a connect or end that changed nothing: a client retrying after a 503
        here re-sends the snapshot, and the workers keep the highest version anyway.
        """
        try:
            await self.redis.xadd(next(self._snapshot_shards), {SNAPSHOT_FIELD: call_json})
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
