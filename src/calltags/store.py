"""Redis: the Lua scripts, and the one place that turns their codes into results.

`Store` holds what a single Redis node and a Redis Cluster share; `NodeStore` and
`ClusterStore` differ in how a postback's rate limit, log entry and a call's snapshot
reach Redis. `open_store` picks one by the client's type, once, at start. Every public
coroutine of a store raises StoreUnavailable, never a driver error, when Redis cannot
answer; CallNotFound, RateLimited and IdempotencyKeyReused are answers, not failures.

With a ReplicaAck (CALLTAGS_WRITE_ACK=replica) every write is followed by a WAIT on the
connection that carried it: once per auto-pipeline batch on one node, once per command
on a cluster shard. A write the replicas did not confirm in time raises StoreUnavailable;
a postback's then WriteUnconfirmed, its log entry marked as answered 503 (ANSWER_FIELD),
as is a postback's whose reply Redis did not give (in either mode).
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import PipelineCommand
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ConnectionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TimeoutError,
)

from calltags import scripts
from calltags.autopipe import (
    READ_COMMANDS,
    AutoPipeline,
    ReplicaAck,
    ReplicaAckedPipeline,
    Unconfirmed,
)
from calltags.errors import StoreBoundary, StoreUnavailable, WriteUnconfirmed, gathered
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
# What an outcome code of the postback write script (postback-6.lua) means for the
# request: (status, error code, HTTP status). The web process answers from it and the
# workers log from it (a log entry's field r), so the two cannot disagree.
POSTBACK_OUTCOMES: dict[int, tuple[str | None, str | None, int]] = {
    **{code: (status, None, 200) for code, status in _POSTBACK_STATUS.items()},
    -1: (None, "call_not_found", 404),
    -2: (None, "rate_limited", 429),
    -3: (None, "idempotency_key_reused", 422),
}
REPLAYED = 3  # the script's code of an idempotent postback's repeat (never logged as r)
# Fields of a postback log entry (stream {prefix}log:{N}): the entry's JSON; the outcome
# code of the write script when the script decided it (see postback-6.lua); and the call
# the tags went to, as stored.
ENTRY_FIELD = b"e"
OUTCOME_FIELD = b"r"
CALL_FIELD = b"c"
# ... and, in a second entry with the same JSON (the same id), the error code the request
# was answered with instead of what the first says: `unavailable` when the replicas did
# not confirm the write in time, or its reply was lost. The workers keep one row, with
# this answer.
ANSWER_FIELD = b"a"
UNCONFIRMED_ANSWER = b"unavailable"
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


class PostbackResult(NamedTuple):  # a tuple: made once a postback, at half the cost
    status: str
    call_uuid: str | None = None
    expires_at_ms: int | None = None
    # A repeat of an idempotent postback: the first one's result, and its `answer`.
    replayed: bool = False
    answer: bytes | None = None


@dataclass(frozen=True)
class Idempotent:
    """An idempotent postback: its idempotency key's `token` (a hash naming its records),
    the `fingerprint` of its parameters, when the records expire, and the `answer`'s
    parts the write does not decide, kept for the repeats."""

    token: str
    fingerprint: bytes
    until_ms: int
    answer: bytes


@dataclass(frozen=True)
class CallerState:
    """What Redis holds of a caller: pending tags (name -> value, source), until when
    they wait (None: there are none), and the caller's calls."""

    pending: dict[str, tuple[str, TagSource]]
    pending_expires_ms: int | None
    calls: list[Call]


# Rewrites the fields of a log stream entry with a caller's data removed; None: the
# entry holds none of it.
Redaction: TypeAlias = Callable[[dict[bytes, bytes]], dict[bytes, bytes] | None]
_STREAM_PAGE = 1000  # entries a stream is read by when redacting


class CallNotFound(Exception):
    pass


class IdempotencyKeyReused(Exception):
    """The idempotency key's first postback had other parameters; nothing written."""


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


def _result(reply: list[Any], rate: RateLimit | None, call_uuid: str) -> WriteOutcome:
    """A postback-6.lua reply as a write's result or refusal."""
    code, detail = reply[0], reply[1]
    if code == -2:
        assert rate is not None
        return RateLimited(int(detail), rate.per_second, rate.burst)
    if code == -3:
        return IdempotencyKeyReused(call_uuid)
    if code < 0:
        return CallNotFound(call_uuid)
    answer, replayed = None, code == REPLAYED
    if replayed:  # the first write's outcome and detail, and its answer
        code, detail, answer = reply[1:4]
    if code == 0:
        return PostbackResult(
            STATUS_STORED, expires_at_ms=int(detail), replayed=replayed, answer=answer
        )
    return PostbackResult(
        _POSTBACK_STATUS[code], call_uuid=detail.decode(), replayed=replayed, answer=answer
    )


def _per_write(counts: Iterable[int], replies: Iterable[Any]) -> list[Any]:
    """Each write's reply, in order, from the replies of postback-6.lua calls of `counts`
    writes each: a call that failed gives each of its writes its error; one its replicas
    did not confirm, each an Unconfirmed of its own reply."""
    each: list[Any] = []
    for count, reply in zip(counts, replies, strict=True):
        if isinstance(reply, Unconfirmed):
            each += [Unconfirmed(one, reply.replicas, reply.wanted) for one in reply.reply]
        elif isinstance(reply, Exception):
            each += [reply] * count
        else:
            each += reply
    return each


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


# The most postbacks one postback-6.lua call writes: a bulk post's items go in calls of
# this many (all sent at once), so that no one script holds Redis for long (~1 ms).
SCRIPT_BATCH = 64
# A postback key's token bucket (its Redis key) and rate.
_Bucket: TypeAlias = tuple[str, RateLimit]
# The postback key's id and its writes' tag source (encode_tag's text before the value).
_Source: TypeAlias = tuple[int, str]


@dataclass(slots=True)
class TagWrite:
    """One postback's write (see Store.write_batch): the caller's tags, the call it
    addresses ("": none), its log entry without the outcome (None: not logged) and, when
    it has an idempotency key, its records."""

    caller: str
    tags: dict[str, str]
    call_uuid: str = ""
    log_entry: bytes | None = None
    idempotent: Idempotent | None = None


# What a write came to: its result, or the refusal or failure it is answered with
# (CallNotFound, RateLimited, IdempotencyKeyReused, WriteUnconfirmed, StoreUnavailable).
WriteOutcome: TypeAlias = PostbackResult | Exception


class Store(StoreBoundary, ABC):
    """Tag writes, connects and call reads, each one Lua call on one caller's keys."""

    driver_errors = REDIS_ERRORS

    def __init__(self, redis: RedisClient, keys: KeySpace, call_ttl_seconds: int):
        self.redis = redis
        self.keys = keys
        self.call_ttl_ms = call_ttl_seconds * SECOND_MS
        self._postback = scripts.register(redis, "postback-6.lua")
        self._connect = scripts.register(redis, "connect-3.lua")
        self._end = scripts.register(redis, "end-2.lua")
        self._fail = scripts.register(redis, "fail-1.lua")
        self._caller = scripts.register(redis, "caller-2.lua")
        self._retract = scripts.register(redis, "retract-1.lua")
        self._erase = scripts.register(redis, "erase-2.lua")
        self._snapshot_shards = itertools.cycle(keys.call_log_shards_all())
        self._log_shards = itertools.cycle(keys.log_shards_all())

    # -- how commands travel: the subclasses' part ---------------------------------------

    @abstractmethod
    def _queue_eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """A script call's reply, to await."""

    @abstractmethod
    def _queue(self, *args: Any) -> Awaitable[Any]:
        """A command's reply, to await."""

    @abstractmethod
    async def _together(self, *replies: Awaitable[Any]) -> list[Any]:
        """The replies of commands queued together, in order."""

    @abstractmethod
    def _write_postbacks(
        self, writes: list[TagWrite], head: list[Any], source: _Source, bucket: _Bucket | None
    ) -> Awaitable[list[Any]]:
        """postback-6.lua's reply for each write, or what its command raised (a Redis
        error, Unconfirmed), given the script's first arguments `head` (ARGV[1..6]): the
        log entries appended, the key's `bucket` asked and the idempotency keys claimed on
        the way (see write_batch). What it gives may raise a Redis error instead: that of
        every write."""

    @abstractmethod
    def _with_snapshot(self, keys: list[str], shard: str) -> list[str]:
        """The keys of a connect or end script, given the call log shard to record to."""

    @abstractmethod
    async def _record(self, shard: str, call_json: bytes) -> None:
        """Queue a call snapshot for the call records in Postgres (see workers/), unless
        the script did."""

    # -- the commands ----------------------------------------------------------------------

    async def append_log(self, entry: bytes) -> None:
        """Add a postback log entry whose outcome is already in it (a rejected request)."""
        try:
            await self._queue("XADD", next(self._log_shards), "*", ENTRY_FIELD, entry)
        except Unconfirmed as exc:
            await self._log_unconfirmed(entry, None)
            raise WriteUnconfirmed(str(exc)) from exc

    async def _log_unconfirmed(self, entry: bytes, reply: Any) -> bool:
        """The request of `entry` is answered 503 as its write was not confirmed: its
        entry again, with the outcome and call of the write script's `reply` when there is
        one, marked with the answer; whether Redis took it. If not, the entry the write
        appended (if any) stands: Redis holds what it says."""
        fields: list[Any] = [ENTRY_FIELD, entry]
        if isinstance(reply, list) and reply and reply[0] in POSTBACK_OUTCOMES:
            fields += [OUTCOME_FIELD, reply[0]]
            if len(reply) > 2:
                fields += [CALL_FIELD, reply[2]]
        fields += [ANSWER_FIELD, UNCONFIRMED_ANSWER]
        try:
            await self._queue("XADD", next(self._log_shards), "*", *fields)
        except Unconfirmed:  # on the primary, as the write was
            return True
        except REDIS_ERRORS:
            return False
        return True

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
        idempotent: Idempotent | None = None,
    ) -> PostbackResult:
        """One postback's write_batch: its result, or its refusal or failure raised."""
        write = TagWrite(caller, tags, call_uuid, log_entry, idempotent)
        (outcome,) = await self.write_batch(
            [write],
            publisher_id=publisher_id,
            key_id=key_id,
            cutoff_seconds=cutoff_seconds,
            storage_seconds=storage_seconds,
            at_ms=at_ms,
            rate=rate,
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def write_batch(
        self,
        writes: list[TagWrite],
        *,
        publisher_id: int,
        key_id: int,
        cutoff_seconds: int,
        storage_seconds: int,
        at_ms: int | None = None,
        rate: RateLimit | None = None,
    ) -> list[WriteOutcome]:
        """Apply each write's tags to its caller's live or recent call, or keep them
        pending, in order, each as if it came alone; what each came to.

        With a `call_uuid`, a write addresses that call; CallNotFound if the caller has
        none. With a `log_entry`, the entry (without its outcome) lands in the postback
        log with the outcome, whatever it is, before this returns, unless the result is a
        replay (the caller logs it). With `rate`, the key's token bucket gives each write
        a token first; RateLimited if empty, and nothing is written. With `idempotent`, a
        repeat writes nothing and gets the first write's result, `replayed`;
        IdempotencyKeyReused if the key's first postback had another fingerprint. A write
        whose reply Redis did not give, or whose replicas did not confirm it, is
        WriteUnconfirmed (logged as answered 503); StoreUnavailable when even that could
        not be logged.
        """
        now = now_ms() if at_ms is None else at_ms
        head: list[Any] = [
            now,
            cutoff_seconds * SECOND_MS,
            storage_seconds * SECOND_MS,
            self.call_ttl_ms,
            rate.per_second if rate is not None else 0,
            rate.burst if rate is not None else 0,
        ]
        bucket = (self.keys.rate_bucket(key_id), rate) if rate is not None else None
        source = encode_tag("", publisher_id, key_id, now)
        try:
            replies = await self._write_postbacks(writes, head, (key_id, source), bucket)
        except REDIS_ERRORS as exc:
            replies = _per_write((len(writes),), (exc,))
        outcomes: list[WriteOutcome] = [
            _result(reply, rate, write.call_uuid) if type(reply) is list else reply
            for write, reply in zip(writes, replies, strict=True)
        ]
        failed = [n for n, reply in enumerate(replies) if type(reply) is not list]
        if failed:  # a Redis error, Unconfirmed included
            answered = await asyncio.gather(*(self._failed(writes[n], replies[n]) for n in failed))
            for n, outcome in zip(failed, answered, strict=True):
                outcomes[n] = outcome
        return outcomes

    async def _failed(self, write: TagWrite, error: Exception) -> StoreUnavailable:
        """What a write whose command failed with `error` comes to, once logged (the
        driver's error kept as its cause)."""
        failure: StoreUnavailable
        if isinstance(error, Unconfirmed):
            if write.log_entry is not None:
                await self._log_unconfirmed(write.log_entry, error.reply)
            failure = WriteUnconfirmed(str(error))
        # The write may have happened (a reply lost with its connection, in a failover):
        # logged under the entry's own id, so that the entry the write may have appended
        # and this one make one row, the 503.
        elif write.log_entry is not None and await self._log_unconfirmed(write.log_entry, None):
            failure = WriteUnconfirmed(f"{type(error).__name__}: {error}")
        else:
            failure = StoreUnavailable(f"{type(error).__name__}: {error}")
        failure.__cause__ = error
        return failure

    def _arguments(
        self, write: TagWrite, source: _Source, keys: list[Any], args: list[Any], claims: bool
    ) -> None:
        """Add one write's keys and arguments to a postback-6.lua call's; with `claims`,
        its idempotency claim too (a single node)."""
        key_id, prefix = source
        caller = write.caller
        keys.append(self.keys.pending(caller))
        keys.append(self.keys.calls(caller))
        idempotent = write.idempotent
        entry = write.log_entry if write.log_entry is not None else b""
        tags = write.tags
        count = 2 * len(tags)
        if idempotent is None:
            head = f"{count}::{write.call_uuid}" if write.call_uuid else count
            args += (head, entry)
        else:
            keys.append(self.keys.replay(caller, key_id, idempotent.token))
            keys.append(self.keys.replays(caller))
            if claims:
                keys.append(self.keys.idempotency(key_id, idempotent.token))
            letters = "isf" if claims else "is"
            args += (f"{count}:{letters}:{write.call_uuid}", entry)
            args += (idempotent.fingerprint, idempotent.until_ms, idempotent.answer)
        put = args.append
        for name, value in tags.items():
            put(name)
            put(prefix + value)

    async def count_failure(self, address: str, window_ms: int) -> tuple[int, int]:
        """Count a failed key attempt from `address`; (attempts in the window, ms left)."""
        try:
            count, left = await self._queue_eval(
                self._fail, [self.keys.failures(address)], [window_ms]
            )
        except Unconfirmed as exc:  # a count of guesses needs no replica
            count, left = exc.reply
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
        shard = next(self._snapshot_shards)
        keys = self._with_snapshot([self.keys.pending(caller), self.keys.calls(caller)], shard)
        args = [call_uuid, now_ms(), self.call_ttl_ms, caller, publisher_id or "", campaign or ""]
        _, (code, raw) = await self._together(
            self._queue("SET", self.keys.call_index(call_uuid), caller, "PX", self.call_ttl_ms),
            self._queue_eval(self._connect, keys, args),
        )
        await self._record(shard, raw)
        return decode_call(raw), code == 0

    async def caller_of(self, call_uuid: str) -> str | None:
        raw = await self._queue("GET", self.keys.call_index(call_uuid))
        return raw.decode() if raw is not None else None

    async def get_call(self, call_uuid: str) -> Call:
        caller = await self.caller_of(call_uuid)
        if caller is None:
            raise CallNotFound(call_uuid)
        raw = await self._queue("HGET", self.keys.calls(caller), call_uuid)
        if raw is None:
            raise CallNotFound(call_uuid)
        return decode_call(raw)

    async def end_call(self, call_uuid: str) -> tuple[Call, bool]:
        """Complete a call; (call, ended_now). CallNotFound for an unknown call."""
        caller = await self.caller_of(call_uuid)
        if caller is None:
            raise CallNotFound(call_uuid)
        shard = next(self._snapshot_shards)
        keys = self._with_snapshot([self.keys.calls(caller)], shard)
        (code, raw), _ = await self._together(
            self._queue_eval(self._end, keys, [call_uuid, now_ms(), self.call_ttl_ms]),
            self._queue("PEXPIRE", self.keys.call_index(call_uuid), self.call_ttl_ms),
        )
        if code < 0:
            raise CallNotFound(call_uuid)
        await self._record(shard, raw)
        return decode_call(raw), code == 0

    # -- a caller's data (the admin API's) -------------------------------------------------

    async def caller_state(self, caller: str) -> CallerState:
        keys = [self.keys.pending(caller), self.keys.calls(caller)]
        ttl, pending, calls = await self._queue_eval(self._caller, keys, [])
        tags: dict[str, tuple[str, TagSource]] = {}
        for n in range(0, len(pending), 2):
            tags[pending[n].decode()] = decode_tag(pending[n + 1].decode())
        expires = now_ms() + int(ttl) if tags and int(ttl) >= 0 else None
        found = sorted((decode_call(raw) for raw in calls), key=lambda call: -call.started_ms)
        return CallerState(tags, expires, found)

    async def retract_pending(self, caller: str, publisher_id: int | None = None) -> int:
        """Remove the caller's pending tags (only `publisher_id`'s, if given); how many."""
        args = [publisher_id if publisher_id is not None else ""]
        return int(await self._queue_eval(self._retract, [self.keys.pending(caller)], args))

    async def erase_caller(self, caller: str) -> tuple[int, int]:
        """Delete the caller's pending tags and calls, the calls' lookup keys and the
        caller's idempotency records (their answers hold the number and tags);
        (pending tags, calls) deleted."""
        keys = [self.keys.pending(caller), self.keys.calls(caller)]
        pending, *uuids = await self._queue_eval(self._erase, keys, [])
        if uuids:  # each in its own slot
            await self._together(
                *(self._queue("DEL", self.keys.call_index(uuid.decode())) for uuid in uuids)
            )
        # Named by idempotency keys the store cannot know: listed in the caller's set.
        listed = self.keys.replays(caller)
        names = await self._queue("SMEMBERS", listed)
        await self._queue("DEL", listed, *names)  # all in the caller's slot
        return int(pending), len(uuids)

    async def redact_streams(self, redact: Redaction) -> int:
        """Replace each entry of the log streams (postbacks and call snapshots) that
        `redact` rewrites by its rewritten copy (a new entry of the same stream; the
        workers keep one row of the two, by the entry's own id); how many were."""
        replaced = 0
        for stream in (*self.keys.log_shards_all(), *self.keys.call_log_shards_all()):
            start = "-"
            while True:
                page = await self.redis.xrange(stream, start, "+", count=_STREAM_PAGE)
                for entry_id, fields in page:
                    rewritten = redact(fields)
                    if rewritten is None:
                        continue
                    flat = [part for pair in rewritten.items() for part in pair]
                    await self._queue("XADD", stream, "*", *flat)
                    await self._queue("XDEL", stream, entry_id)
                    replaced += 1
                if len(page) < _STREAM_PAGE:
                    break
                last = page[-1][0]
                start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        return replaced


class NodeStore(Store):
    """On one Redis node (a `Redis` client), commands issued in the same event-loop turn
    travel together (AutoPipeline), and every key is in reach of every script: a
    postback's rate limit and log append happen inside its script, and a call's
    snapshot is appended by the connect and end scripts."""

    def __init__(
        self, redis: Redis, keys: KeySpace, call_ttl_seconds: int, ack: ReplicaAck | None = None
    ):
        super().__init__(redis, keys, call_ttl_seconds)
        used = [
            self._postback, self._connect, self._end, self._fail, self._caller, self._retract,
            self._erase,
        ]  # fmt: skip
        self._pipe = (
            AutoPipeline(redis, used) if ack is None else ReplicaAckedPipeline(redis, used, ack)
        )

    def _queue_eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        # A future, so that several can be awaited together without tasks.
        return self._pipe.evalsha(script, keys, args)

    def _queue(self, *args: Any) -> Awaitable[Any]:
        return self._pipe.execute(*args)

    async def _together(self, *replies: Awaitable[Any]) -> list[Any]:
        # Futures already on their way in one batch: awaited in turn, without the tasks
        # and callbacks of `asyncio.gather`.
        try:
            return [await reply for reply in replies]
        except REDIS_ERRORS:
            for reply in replies:  # a batch's futures end together: take their errors too
                if isinstance(reply, asyncio.Future) and reply.done() and not reply.cancelled():
                    reply.exception()
            raise

    def _write_postbacks(
        self, writes: list[TagWrite], head: list[Any], source: _Source, bucket: _Bucket | None
    ) -> Awaitable[list[Any]]:
        head.append("lb" if bucket is not None else "l")
        if len(writes) <= SCRIPT_BATCH:  # a single postback, most bulk posts: one call
            return self._call(writes, head, source, bucket)
        # Every call of the batch queued at once: one auto-pipeline batch.
        calls = [
            (len(chunk), self._call(chunk, head.copy(), source, bucket))
            for chunk in (
                writes[start : start + SCRIPT_BATCH]
                for start in range(0, len(writes), SCRIPT_BATCH)
            )
        ]
        return self._settle(calls)

    def _call(
        self, writes: list[TagWrite], args: list[Any], source: _Source, bucket: _Bucket | None
    ) -> asyncio.Future[Any]:
        """One postback-6.lua call for `writes`, given its first arguments."""
        keys: list[Any] = [next(self._log_shards)]
        if bucket is not None:
            keys.append(bucket[0])
        for write in writes:
            self._arguments(write, source, keys, args, claims=True)
        return self._pipe.evalsha(self._postback, keys, args)

    @staticmethod
    async def _settle(calls: list[tuple[int, asyncio.Future[Any]]]) -> list[Any]:
        settled = await gathered((call for _, call in calls), REDIS_ERRORS)
        return _per_write((count for count, _ in calls), settled)

    def _with_snapshot(self, keys: list[str], shard: str) -> list[str]:
        keys.append(shard)
        return keys

    async def _record(self, shard: str, call_json: bytes) -> None:
        pass  # the script appended the snapshot


class ClusterStore(Store):
    """On Redis Cluster (a `RedisCluster` client) a script may touch one slot only: the
    caller's. The key's token bucket, the postback log and the call log live in other
    slots, so the rate limit (ratelimit-2.lua), the log entry and the call snapshot are
    commands of their own around the caller's script.

    With a ReplicaAck, each write goes to its shard's primary followed by WAIT on the same
    connection (`_acked`); reads, and the rate limit's token, go as they are."""

    redis: RedisCluster

    def __init__(
        self,
        redis: RedisCluster,
        keys: KeySpace,
        call_ttl_seconds: int,
        ack: ReplicaAck | None = None,
    ):
        super().__init__(redis, keys, call_ttl_seconds)
        self._ratelimit = scripts.register(redis, "ratelimit-2.lua")
        self._claim_script = scripts.register(redis, "claim-1.lua")
        self._ack = ack

    def _queue_eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        if self._ack is not None:
            return self._acked(
                self._ack, keys[0], script, "EVALSHA", script.sha, len(keys), *keys, *args
            )
        reply: Awaitable[Any] = script(keys=keys, args=args)
        return reply

    def _queue(self, *args: Any) -> Awaitable[Any]:
        if self._ack is not None and args[0] not in READ_COMMANDS:
            return self._acked(self._ack, args[1], None, *args)
        reply: Awaitable[Any] = self.redis.execute_command(*args)
        return reply

    async def _acked(
        self, ack: ReplicaAck, key: str, script: AsyncScript | None, *command: Any
    ) -> Any:
        """`command` (a write of `key`'s slot) and WAIT, together on one connection to
        the slot's primary. A redirect (the slot moved: resharding, a failover) is followed
        by the cluster client, and the write, done elsewhere, counts as unconfirmed."""
        await self.redis.initialize()  # at once when it is; again after a failure
        node = self.redis.get_node_from_key(key)
        reply: Any = None
        held: Any = None
        for attempt in (1, 2):
            if node is None:
                break
            sent = [PipelineCommand(0, *command), PipelineCommand(1, *ack.wait())]
            try:
                await node.execute_pipeline(sent)
            except (ConnectionError, TimeoutError, OSError):
                await self._forget(node.name)
                raise
            reply, held = sent[0].result, sent[1].result
            if isinstance(reply, NoScriptError) and script is not None and attempt == 1:
                await node.execute_command("SCRIPT", "LOAD", script.script)
                continue
            break
        if isinstance(reply, ConnectionError | TimeoutError):
            assert node is not None
            await self._forget(node.name)
            raise reply
        if node is None or isinstance(reply, AskError):  # MovedError is an AskError too
            reply, held = await self.redis.execute_command(*command), None
        elif isinstance(reply, Exception):
            raise reply
        judged = ack.judge(reply, held)
        if isinstance(judged, Unconfirmed):
            raise judged
        return judged

    async def _forget(self, node_name: str) -> None:
        """What the cluster client does when a node fails it: that node is no start
        point any more, and the slots are learnt again before the next command."""
        self.redis.nodes_manager.startup_nodes.pop(node_name, None)
        await self.redis.aclose()

    async def _together(self, *replies: Awaitable[Any]) -> list[Any]:
        return await asyncio.gather(*replies)

    async def _write_postbacks(
        self, writes: list[TagWrite], head: list[Any], source: _Source, bucket: _Bucket | None
    ) -> list[Any]:
        replies: list[Any] = [None] * len(writes)
        if bucket is not None:  # a token a write, first (a token needs no replica)
            name, rate = bucket
            try:
                left = await self._ratelimit(
                    keys=[name], args=[head[0], rate.per_second, rate.burst, len(writes)]
                )
            except REDIS_ERRORS as exc:
                left = [exc] * len(writes)
            for n, tokens in enumerate(left):
                if isinstance(tokens, Exception) or tokens < 0:
                    # answered as the postback script answers a refusal
                    replies[n] = tokens if isinstance(tokens, Exception) else [-2, -tokens]
        claims = [
            (n, self._claim(write.idempotent, source[0]))
            for n, write in enumerate(writes)
            if write.idempotent is not None and replies[n] is None
        ]
        for (n, _), mine in zip(
            claims, await gathered((c for _, c in claims), REDIS_ERRORS), strict=True
        ):
            if isinstance(mine, Exception) or not mine:
                replies[n] = mine if isinstance(mine, Exception) else [-3, b""]
        # The rest, in calls of one slot's callers each: the slots together, a slot's
        # calls one after the other (a caller's writes stay in order).
        slots: dict[int, list[int]] = {}
        for n, write in enumerate(writes):
            if replies[n] is None:
                slots.setdefault(self.redis.keyslot(self.keys.pending(write.caller)), []).append(n)
        calls = (self._slot_writes(writes, ns, head, source) for ns in slots.values())
        done = await gathered(calls, REDIS_ERRORS)
        for ns, got in zip(slots.values(), done, strict=True):
            for n, reply in zip(ns, got if isinstance(got, list) else [got] * len(ns), strict=True):
                replies[n] = reply
        # The log entries with the outcomes, as postback-6.lua appends them on one node.
        logs = [
            (n, self._log_reply(write.log_entry, replies[n]))
            for n, write in enumerate(writes)
            if write.log_entry is not None and not isinstance(replies[n], Exception)
            and replies[n][0] != REPLAYED
        ]  # fmt: skip
        for (n, _), logged in zip(
            logs, await gathered((log for _, log in logs), REDIS_ERRORS), strict=True
        ):
            if isinstance(logged, Exception):
                replies[n] = logged
        return replies

    async def _slot_writes(
        self, writes: list[TagWrite], ns: list[int], head: list[Any], source: _Source
    ) -> list[Any]:
        """The replies of writes `ns` (callers of one slot), in calls of up to
        SCRIPT_BATCH writes, each call once the one before has answered."""
        replies: list[Any] = []
        for start in range(0, len(ns), SCRIPT_BATCH):
            chunk = ns[start : start + SCRIPT_BATCH]
            keys: list[Any] = []
            args = [*head, ""]
            for n in chunk:
                self._arguments(writes[n], source, keys, args, claims=False)
            try:
                reply = await self._queue_eval(self._postback, keys, args)
            except REDIS_ERRORS as exc:
                reply = exc
            replies += _per_write((len(chunk),), (reply,))
        return replies

    async def _log_reply(self, entry: bytes, reply: list[Any]) -> None:
        code, _, *call_json = reply
        try:
            await self._log_outcome(
                next(self._log_shards), entry, code, call_json[0] if call_json else None
            )
        except Unconfirmed as exc:  # the postback is judged by its entry's WAIT
            raise Unconfirmed(reply, exc.replicas, exc.wanted) from exc

    async def _claim(self, idempotent: Idempotent | None, key_id: int) -> bool:
        """Whether the idempotency key is this postback's: claimed now with its
        fingerprint, or claimed before with the same one (claim-1.lua, as postback-6.lua
        claims it on one node). The claim only tells parameters apart: the write is
        decided in the caller's slot, so a claim that a failover loses costs no second
        write."""
        assert idempotent is not None
        claim = self.keys.idempotency(key_id, idempotent.token)
        given = [idempotent.fingerprint, idempotent.until_ms]
        try:
            mine = await self._queue_eval(self._claim_script, [claim], given)
        except Unconfirmed as exc:
            mine = exc.reply
        return bool(mine)

    async def _log_outcome(
        self, shard: str, entry: bytes, code: int, call_json: bytes | None
    ) -> None:
        """The log entry with the outcome, as postback-6.lua appends it on one node."""
        fields: list[Any] = [ENTRY_FIELD, entry, OUTCOME_FIELD, code]
        if call_json is not None:
            fields += [CALL_FIELD, call_json]
        await self._queue("XADD", shard, "*", *fields)

    def _with_snapshot(self, keys: list[str], shard: str) -> list[str]:
        return keys

    async def _record(self, shard: str, call_json: bytes) -> None:
        await self._queue("XADD", shard, "*", SNAPSHOT_FIELD, call_json)


def open_store(
    redis: RedisClient, keys: KeySpace, call_ttl_seconds: int, ack: ReplicaAck | None = None
) -> Store:
    """The store for the client: a cluster client's is a ClusterStore. With `ack`, writes
    are answered once the replicas it asks for hold them."""
    if isinstance(redis, RedisCluster):
        return ClusterStore(redis, keys, call_ttl_seconds, ack)
    return NodeStore(redis, keys, call_ttl_seconds, ack)
