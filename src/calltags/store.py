"""Redis: the Lua scripts, and the one place that turns their codes into results."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from calltags import scripts
from calltags.autopipe import AutoPipeline
from calltags.errors import StoreUnavailable
from calltags.keys import SECOND_MS, KeySpace
from calltags.times import now_ms

# A single-node or cluster client: the two share the command API calltags uses.
RedisClient: TypeAlias = Redis | RedisCluster
# What a command raises when Redis cannot answer it. The cluster client raises
# RedisClusterException, which is no RedisError, when it reaches no node at all.
REDIS_ERRORS = (RedisError, RedisClusterException)

STATUS_STORED = "call not found, tags stored"
STATUS_LIVE = "call in progress, tags applied"
STATUS_COMPLETED = "completed call found, tags applied"
_POSTBACK_STATUS = {0: STATUS_STORED, 1: STATUS_LIVE, 2: STATUS_COMPLETED}
# What an outcome code of the postback write script (postback-4.lua) means for the
# request: (status, error code, HTTP status). The web process answers from it and the
# workers log from it (a log entry's field r), so the two cannot disagree.
POSTBACK_OUTCOMES: dict[int, tuple[str | None, str | None, int]] = {
    **{code: (status, None, 200) for code, status in _POSTBACK_STATUS.items()},
    -1: (None, "call_not_found", 404),
    -2: (None, "rate_limited", 429),
}
# Fields of a postback log entry (stream {prefix}log:{N}): the entry's JSON; the outcome
# code of the write script when the script decided it (see postback-4.lua); and the call
# the tags went to, as stored.
ENTRY_FIELD = b"e"
OUTCOME_FIELD = b"r"
CALL_FIELD = b"c"
SNAPSHOT_FIELD = b"c"  # the field of a call snapshot (the call's JSON) in {prefix}calllog:{N}


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


class RateLimited(Exception):
    def __init__(self, retry_after_ms: int, limit: float, burst: int):
        super().__init__(retry_after_ms)
        self.retry_after_ms = retry_after_ms
        self.limit = limit
        self.burst = burst


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_second` tokens a second, at most `burst` at once."""

    per_second: float
    burst: int


def encode_tag(value: str, publisher_id: int, key_id: int, set_at_ms: int) -> str:
    return f"{publisher_id}:{key_id}:{set_at_ms}|{value}"


def decode_tag(raw: str) -> tuple[str, TagSource]:
    source, _, value = raw.partition("|")
    publisher_id, key_id, set_at = source.split(":")
    return value, TagSource(int(publisher_id), int(key_id), int(set_at))


def decode_call(raw: bytes | str) -> Call:
    return call_from_doc(orjson.loads(raw))


def call_from_doc(doc: dict[str, Any]) -> Call:
    """A call from its parsed JSON (the format is in lua/connect-3.lua)."""
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
    """Tag writes, connects and call reads, each one Lua call on one caller's keys.

    On a single Redis node (a `Redis` client) commands issued in the same event-loop turn
    travel together (AutoPipeline), and a postback's rate limit and log append happen
    inside its script. On Redis Cluster those keys live in other slots, so they are
    separate commands around the script (a `RedisCluster` client).
    """

    def __init__(self, redis: RedisClient, keys: KeySpace, call_ttl_seconds: int):
        self.redis = redis
        self.keys = keys
        self.call_ttl_ms = call_ttl_seconds * SECOND_MS
        self.cluster = isinstance(redis, RedisCluster)
        self._postback: AsyncScript = scripts.register(redis, "postback-4.lua")
        self._connect: AsyncScript = scripts.register(redis, "connect-3.lua")
        self._end: AsyncScript = scripts.register(redis, "end-2.lua")
        self._ratelimit: AsyncScript = scripts.register(redis, "ratelimit-1.lua")
        self._fail: AsyncScript = scripts.register(redis, "fail-1.lua")
        loaded = [self._postback, self._connect, self._end, self._ratelimit, self._fail]
        self._pipe = None if self.cluster else AutoPipeline(redis, loaded)
        self._snapshot_shards = itertools.cycle(keys.call_log_shards_all())
        self._log_shards = itertools.cycle(keys.log_shards_all())

    def _queue_eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """A script call's reply, to await: queued on the auto-pipeline (a future, so
        that several can be awaited together without tasks) or sent alone."""
        if self._pipe is not None:
            return self._pipe.evalsha(script, keys, args)
        alone: Awaitable[Any] = script(keys=keys, args=args)
        return alone

    def _queue(self, *args: Any) -> Awaitable[Any]:
        """A command's reply, to await (see _queue_eval)."""
        if self._pipe is not None:
            return self._pipe.execute(*args)
        alone: Awaitable[Any] = self.redis.execute_command(*args)
        return alone

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._queue_eval(script, keys, args)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _command(self, *args: Any) -> Any:
        try:
            return await self._queue(*args)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _together(self, *replies: Awaitable[Any]) -> list[Any]:
        """The replies of commands queued together, in order. On the auto-pipeline they
        are futures already on their way in one batch: awaited in turn, without the
        tasks and callbacks of `asyncio.gather`."""
        try:
            if self._pipe is None:
                return await asyncio.gather(*replies)
            return [await reply for reply in replies]
        except REDIS_ERRORS as exc:
            for reply in replies:  # a batch's futures end together: take their errors too
                if isinstance(reply, asyncio.Future) and reply.done() and not reply.cancelled():
                    reply.exception()
            raise StoreUnavailable(str(exc)) from exc

    async def append_log(self, entry: bytes) -> None:
        """Add a postback log entry whose outcome is already in it (a rejected request)."""
        await self._command("XADD", next(self._log_shards), "*", ENTRY_FIELD, entry)

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
        log_entry: bytes | None = None,
        rate: RateLimit | None = None,
    ) -> PostbackResult:
        """Apply tags to the caller's live or recent call, or keep them pending.

        With `call_uuid`, the post addresses that call; CallNotFound if the caller has none.
        With `log_entry`, the entry (without its outcome) lands in the postback log with the
        outcome, whatever it is, before this returns or raises. With `rate`, the key's token
        bucket is asked first; RateLimited if empty, and nothing is written.
        """
        now = now_ms() if at_ms is None else at_ms
        keys = [self.keys.pending(caller), self.keys.calls(caller)]
        log_shard = next(self._log_shards) if log_entry is not None else None
        bucket = self.keys.rate_bucket(key_id) if rate is not None else None
        if self.cluster:  # the script gets the caller's keys only: they share one slot
            if rate is not None and bucket is not None:
                left = await self._eval(
                    self._ratelimit, [bucket], [now, rate.per_second, rate.burst]
                )
                if left < 0:
                    if log_shard is not None and log_entry is not None:
                        await self._log_outcome(log_shard, log_entry, -2, None)
                    raise RateLimited(-left, rate.per_second, rate.burst)
        elif log_shard is not None:
            keys.append(log_shard)
            if bucket is not None:
                keys.append(bucket)
        args: list[str | int | float | bytes] = [
            now,
            cutoff_seconds * SECOND_MS,
            storage_seconds * SECOND_MS,
            self.call_ttl_ms,
            call_uuid,
            rate.per_second if rate is not None else 0,
            rate.burst if rate is not None else 0,
            log_entry if log_entry is not None and not self.cluster else b"",
        ]
        for name, value in tags.items():
            args.append(name)
            args.append(encode_tag(value, publisher_id, key_id, now))
        code, detail, *call_json = await self._eval(self._postback, keys, args)
        if self.cluster and log_shard is not None and log_entry is not None:
            await self._log_outcome(log_shard, log_entry, code, call_json[0] if call_json else None)
        if code == -2:
            assert rate is not None
            raise RateLimited(int(detail), rate.per_second, rate.burst)
        if code < 0:
            raise CallNotFound(call_uuid)
        if code == 0:
            return PostbackResult(STATUS_STORED, expires_at_ms=int(detail))
        return PostbackResult(
            _POSTBACK_STATUS[code],
            call_uuid=detail.decode(),
            call_json=call_json[0] if call_json else None,
        )

    async def _log_outcome(
        self, shard: str, entry: bytes, code: int, call_json: bytes | None
    ) -> None:
        fields: list[Any] = [ENTRY_FIELD, entry, OUTCOME_FIELD, code]
        if call_json is not None:
            fields += [CALL_FIELD, call_json]
        await self._command("XADD", shard, "*", *fields)

    async def count_failure(self, address: str, window_ms: int) -> tuple[int, int]:
        """Count a failed key attempt from `address`; (attempts in the window, ms left)."""
        count, left = await self._eval(self._fail, [self.keys.failures(address)], [window_ms])
        return int(count), int(left)

    async def connect(
        self,
        caller: str,
        call_uuid: str,
        *,
        publisher_id: str | None = None,
        campaign: str | None = None,
    ) -> tuple[Call, bool]:
        """Start a live call claiming the caller's pending tags; (call, created)."""
        keys = [self.keys.pending(caller), self.keys.calls(caller)]
        snapshot_shard = next(self._snapshot_shards)
        if not self.cluster:
            keys.append(snapshot_shard)
        args = [call_uuid, now_ms(), self.call_ttl_ms, caller, publisher_id or "", campaign or ""]
        _, (code, raw) = await self._together(
            self._queue("SET", self.keys.call_index(call_uuid), caller, "PX", self.call_ttl_ms),
            self._queue_eval(self._connect, keys, args),
        )
        if self.cluster:
            await self._record(snapshot_shard, raw)
        return decode_call(raw), code == 0

    async def caller_of(self, call_uuid: str) -> str | None:
        raw = await self._command("GET", self.keys.call_index(call_uuid))
        return raw.decode() if raw is not None else None

    async def get_call(self, call_uuid: str) -> Call:
        caller = await self.caller_of(call_uuid)
        if caller is None:
            raise CallNotFound(call_uuid)
        raw = await self._command("HGET", self.keys.calls(caller), call_uuid)
        if raw is None:
            raise CallNotFound(call_uuid)
        return decode_call(raw)

    async def end_call(self, call_uuid: str) -> tuple[Call, bool]:
        """Complete a call; (call, ended_now). CallNotFound for an unknown call."""
        caller = await self.caller_of(call_uuid)
        if caller is None:
            raise CallNotFound(call_uuid)
        keys = [self.keys.calls(caller)]
        snapshot_shard = next(self._snapshot_shards)
        if not self.cluster:
            keys.append(snapshot_shard)
        (code, raw), _ = await self._together(
            self._queue_eval(self._end, keys, [call_uuid, now_ms(), self.call_ttl_ms]),
            self._queue("PEXPIRE", self.keys.call_index(call_uuid), self.call_ttl_ms),
        )
        if code < 0:
            raise CallNotFound(call_uuid)
        if self.cluster:
            await self._record(snapshot_shard, raw)
        return decode_call(raw), code == 0

    async def _record(self, shard: str, call_json: bytes) -> None:
        """Queue a call snapshot for the call records in Postgres (see workers/); on a
        single node the scripts do this themselves."""
        await self._command("XADD", shard, "*", SNAPSHOT_FIELD, call_json)
