"""The postback log's Postgres side: entries and call snapshots move from the Redis
streams into Postgres in batches.

A worker process runs one `Sink`: a task per stream (the postback log shards and the
call log shards), each reading through the consumer group SINK_GROUP, so any number of
worker processes share the shards and each shard is flushed in parallel with the
others. A batch of new entries is COPYed straight into `postbacks` (one statement, so
all or nothing); if some of its rows are there already (the batch was delivered
before, say by a worker that died between commit and acknowledgement), the COPY fails
on the primary key and the batch goes the careful way instead: COPY into a temp table,
then INSERT ... ON CONFLICT DO NOTHING on the entry id. Entries taken over from a dead
worker go the careful way from the start. Call records go through a temp table and are
replaced only by a higher version. A batch is acknowledged and deleted in Redis only
after the commit: a batch delivered twice adds no row.

Rows are built with as little work per entry as the log allows (this is the worker's
hot loop): an entry's JSON is parsed once and its values taken as they are, times as
Unix ms and JSON as Python values, which the connections' own codecs encode. An entry
that does not fit makes the COPY fail; the batch is then rebuilt checking each entry,
and an entry that cannot be read is kept as an `undecodable_entry` row, never lost.
Entries a dead worker read and never acknowledged are taken over (XAUTOCLAIM) once
idle for `claim_idle_ms`. While Postgres or Redis cannot be reached the batch is
retried with back-off, and stays in Redis until it is committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import secrets
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from calltags import scripts
from calltags.keys import SINK_GROUP, KeySpace
from calltags.log import ENTRY_FIELD, MAX_TAG_VALUE, stream_id_ms
from calltags.store import (
    CALL_FIELD,
    OUTCOME_FIELD,
    POSTBACK_OUTCOMES,
    SNAPSHOT_FIELD,
    RedisClient,
    call_from_doc,
)

log = logging.getLogger("calltags.sink")

EPOCH_DATE = date(1970, 1, 1)
DAY_MS = 86_400_000  # 1 day in ms
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01 UTC, Postgres' own epoch, in Unix ms
MAX_MS = 253_402_300_799_999  # the end of year 9999 UTC, in Unix ms
BLOCK_MS = 1000  # a read waits this long for new entries; also the longest stop delay, ms
# Most entries one Redis command reads or acknowledges: Redis serves nobody else while
# it runs (a few µs an entry), so a big batch is read and acknowledged in slices.
REDIS_SLICE = 1000
PARTITION_DAYS_AHEAD = 3  # day partitions of the postback log kept ready beyond today
CONSUMER_MAX_IDLE_MS = DAY_MS  # a consumer idle this long with nothing pending is removed
BACKOFF_FIRST = 0.1  # s before the first retry; doubles up to `max_backoff`

# A stream entry as redis-py returns it: (id, fields), fields None once deleted.
Entry: TypeAlias = tuple[bytes, dict[bytes, bytes] | None]
Row: TypeAlias = tuple[Any, ...]
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# Named as the keys of a log entry (log.make_entry), so a row is the entry's values.
POSTBACK_COLUMNS = (
    "received_at", "id", "method", "publisher_id", "key_id", "key_prefix", "caller_raw",
    "caller_number", "call_uuid", "tags", "status", "error", "http_status", "remote_addr",
    "user_agent", "latency_us",
)  # fmt: skip
_POSTBACK_VALUES = itemgetter(*POSTBACK_COLUMNS)
CALL_COLUMNS = (
    "call_uuid", "caller_number", "publisher_id", "campaign", "state", "started_at",
    "ended_at", "tags", "tag_sources", "version", "updated_at",
)  # fmt: skip

_STAGE_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS postbacks_stage (LIKE postbacks) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS calls_stage (LIKE calls) ON COMMIT DELETE ROWS;"
)
_POSTBACK_LIST = ", ".join(POSTBACK_COLUMNS)
_INSERT_POSTBACKS = (
    f"INSERT INTO postbacks ({_POSTBACK_LIST}) SELECT {_POSTBACK_LIST} FROM postbacks_stage"
    " ON CONFLICT DO NOTHING"
)
_CALL_LIST = ", ".join(CALL_COLUMNS)
# One snapshot per call (the newest); inserted in call_uuid order so that concurrent
# workers lock rows in the same order. An older or repeated snapshot changes nothing.
_UPSERT_CALLS = (
    f"INSERT INTO calls AS c ({_CALL_LIST})"
    f" SELECT DISTINCT ON (call_uuid) {_CALL_LIST} FROM calls_stage"
    " ORDER BY call_uuid, started_at DESC, version DESC"
    " ON CONFLICT (call_uuid) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in CALL_COLUMNS[1:])
    + " WHERE (c.started_at, c.version) < (EXCLUDED.started_at, EXCLUDED.version)"
)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Stopped(Exception):
    """The sink was asked to stop while a batch waited: it stays pending in Redis."""


class _BadData(Exception):
    """A batch's rows were refused for their values (not because a server is down)."""


# Raised by asyncpg for a value it cannot encode (client side: ValueError, TypeError,
# OverflowError) or that Postgres refuses (SQLSTATE class 22, asyncpg.DataError).
_DATA_ERRORS = (ValueError, TypeError, OverflowError, asyncpg.DataError)
# What reading a malformed entry may raise.
_ENTRY_ERRORS = (KeyError, TypeError, ValueError, OverflowError, AttributeError)


def _clean(value: Any) -> Any:
    """`value` with NUL characters replaced: Postgres text and jsonb refuse them."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _loads(raw: bytes | None, clean: bool = True) -> Any:
    """Parsed JSON; `clean`: with NUL characters replaced. The hot loop parses without
    (looking for them costs as much as parsing): a NUL then makes the batch's COPY
    fail, and the batch is made again, checked and cleaned."""
    if raw is None:
        raise ValueError("the entry has no payload")
    doc = orjson.loads(raw)
    return _clean(doc) if clean and b"\\u0000" in raw else doc


def _outcome(code: bytes) -> tuple[str | None, str | None, int] | None:
    """(status, error, http_status) of a write script's outcome code; None if unknown."""
    try:
        return POSTBACK_OUTCOMES.get(int(code))
    except ValueError:
        return None


def _snapshot(value: bytes, stream: str, entry_id: bytes, clean: bool) -> Any:
    """The call JSON an entry carries (field c), parsed; None if it cannot be read (the
    entry's own row is kept all the same)."""
    try:
        snapshot = _loads(value, clean)
    except ValueError:
        snapshot = None
    if not isinstance(snapshot, dict):
        log.error("dropped unreadable call snapshot in %s %r", stream, entry_id)
        return None
    return snapshot


def _uuid(text: str) -> str:
    """The entry id, checked here so that a bad one cannot fail the whole COPY."""
    if not _UUID.fullmatch(text):
        raise ValueError(f"not a UUID: {text!r}")
    return text


def _ms(value: Any) -> int:
    """A time in Unix ms that Postgres takes."""
    ms = int(value)
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"time out of range: {ms}")
    return ms


def _int(value: Any, bits: int = 64) -> int | None:
    if value is None:
        return None
    number = int(value)
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise ValueError(f"not a {bits}-bit integer: {value!r}")
    return number


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def postback_row(entry: dict[str, Any]) -> Row:
    """A `postbacks` row (POSTBACK_COLUMNS) from a log entry made by log.make_entry,
    every value checked: ValueError (or TypeError, KeyError) if one would not fit."""
    tags = entry.get("tags") or {}
    if not isinstance(tags, dict):
        raise ValueError("tags is not an object")
    return (
        _ms(entry["received_at"]),
        _uuid(entry["id"]),
        str(entry["method"]),
        _int(entry.get("publisher_id")),
        _int(entry.get("key_id")),
        _text(entry.get("key_prefix")),
        _text(entry.get("caller_raw")),
        _text(entry.get("caller_number")),
        _text(entry.get("call_uuid")),
        tags,
        _text(entry.get("status")),
        _text(entry.get("error")),
        _int(entry["http_status"], 16),
        _text(entry.get("remote_addr")),
        _text(entry.get("user_agent")),
        _int(entry.get("latency_us")),
    )


def undecodable_row(stream: str, entry_id: bytes, raw: bytes | None) -> Row:
    """A row standing for an entry that cannot be read, so that it is kept, not lost."""
    text = raw.decode("utf-8", "replace")[:MAX_TAG_VALUE] if raw is not None else ""
    return (
        stream_id_ms(entry_id),
        uuid.uuid5(uuid.NAMESPACE_URL, f"{stream}/{entry_id.decode()}"),
        "?",
        *(None,) * 6,
        {"raw": _clean(text)},
        None,
        "undecodable_entry",
        0,
        *(None,) * 3,
    )


def call_row(doc: dict[str, Any]) -> Row:
    """A `calls` row (CALL_COLUMNS) from a call's JSON as the Lua scripts store it."""
    call = call_from_doc(doc)
    changed = [call.started_ms, call.ended_ms or 0, *(s.set_at_ms for s in call.sources.values())]
    return (
        str(call.call_uuid),
        str(call.caller_number),
        _text(call.publisher_id),
        _text(call.campaign),
        str(call.state),
        _ms(call.started_ms),
        _ms(call.ended_ms) if call.ended_ms is not None else None,
        call.tags,
        call.tag_sources(),
        _int(call.version, 32),
        _ms(max(changed)),
    )


def utc_today() -> date:
    return datetime.now(UTC).date()


def _encode_ms(ms: int) -> tuple[int]:
    return ((ms - PG_EPOCH_MS) * 1000,)  # Postgres counts µs from 2000-01-01


def _decode_ms(value: tuple[int]) -> int:
    return value[0] // 1000 + PG_EPOCH_MS


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)  # jsonb's binary format: version 1, then the text


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGE_TABLES)
    # The sink's rows carry times as Unix ms and JSON as Python values, as the log
    # entries do: no datetime object and no JSON text is made per row in Python.
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_ms,
        decoder=_decode_ms,
        format="tuple",
    )
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no reset query (one round trip per batch):
    the sink leaves no session state behind, and asyncpg itself rolls back a
    transaction a cancelled batch left open."""


async def create_sink_pool(dsn: str, max_size: int = 4) -> asyncpg.Pool:
    """A pool that opens connections when first needed, so that a worker starts (and
    waits, retrying) while Postgres is still unreachable."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        timeout=10,  # s to connect
        command_timeout=60,  # s per statement
    )
    return pool


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Counters:
    batches: int = 0
    rows: int = 0
    calls: int = 0
    claimed: int = 0
    retries: int = 0


class Backoff:
    def __init__(self, first: float, most: float):
        self.first = first
        self.most = most
        self.next_delay = first

    def reset(self) -> None:
        self.next_delay = self.first

    def take(self) -> float:
        delay = self.next_delay
        self.next_delay = min(self.most, delay * 2)
        return delay * random.uniform(0.75, 1.0)


class Sink:
    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        keys: KeySpace,
        *,
        batch: int = 1000,
        claim_idle_ms: int = 60_000,
        max_backoff: float = 5.0,
        consumer: str | None = None,
    ):
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.max_backoff = max_backoff
        self.consumer = consumer or consumer_name()
        self.counters = Counters()
        self._postback_streams = frozenset(keys.log_shards_all())
        self._claim_cursor: dict[str, bytes] = {}
        self._claim_due: dict[str, float] = {}
        self._days: set[int] = set()  # days (since the epoch) known to have a partition
        self._ack: AsyncScript = scripts.register(redis, "ack-1.lua")

    @property
    def streams(self) -> list[str]:
        return self.keys.log_shards_all() + self.keys.call_log_shards_all()

    # -- the worker loop ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every stream until `stop` is set; a batch in hand is finished first."""
        await asyncio.gather(*(self._run_stream(stream, stop) for stream in self.streams))

    async def _run_stream(self, stream: str, stop: asyncio.Event) -> None:
        backoff = Backoff(BACKOFF_FIRST, self.max_backoff)
        while not stop.is_set():
            try:
                await self.flush_once(stream, block_ms=BLOCK_MS, stop=stop)
                backoff.reset()
            except _Stopped:
                return
            except Exception:  # a worker must outlive any failure: log it, wait, go on
                log.exception("flushing %s failed, retrying", stream)
                self.counters.retries += 1
                await _sleep_unless(stop, backoff.take())

    async def flush_once(
        self, stream: str, *, block_ms: int | None = None, stop: asyncio.Event | None = None
    ) -> int:
        """Move one batch of `stream` into Postgres; how many entries it held (0: none
        waiting). Entries idle in a dead consumer come first, then new ones."""
        batch = await self._claim(stream)
        fresh = not batch
        if fresh:
            batch = await self._read(stream, block_ms)
        if not batch:
            return 0
        await self._store(stream, batch, stop, fresh=fresh)
        return len(batch)

    async def drain(self) -> int:
        """Flush every stream until none has anything new; how many entries moved.

        For tests and benchmarks: entries pending in another consumer are left to it
        (or to a claim once they are idle).
        """

        async def one(stream: str) -> int:
            moved = 0
            while done := await self.flush_once(stream):
                moved += done
            return moved

        return sum(await asyncio.gather(*(one(s) for s in self.streams)))

    # -- Redis side ----------------------------------------------------------------------

    async def ensure_groups(self, streams: Iterable[str] | None = None) -> None:
        for stream in self.streams if streams is None else streams:
            try:
                await self.redis.xgroup_create(stream, SINK_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _read(self, stream: str, block_ms: int | None) -> list[Entry]:
        """Up to `batch` new entries, read in slices; the first read waits up to
        `block_ms` for one to come."""
        entries = await self._read_slice(stream, min(self.batch, REDIS_SLICE), block_ms)
        last = len(entries)
        while last == REDIS_SLICE and len(entries) < self.batch:  # maybe more waiting
            more = await self._read_slice(stream, min(self.batch - len(entries), REDIS_SLICE))
            entries += more
            last = len(more)
        return entries

    async def _read_slice(
        self, stream: str, count: int, block_ms: int | None = None
    ) -> list[Entry]:
        for attempt in (1, 2):
            try:
                reply = await self.redis.xreadgroup(
                    SINK_GROUP, self.consumer, {stream: ">"}, count=count, block=block_ms
                )
                break
            except ResponseError as exc:  # no group yet (first run, or Redis lost it)
                if "NOGROUP" not in str(exc) or attempt == 2:
                    raise
                await self.ensure_groups([stream])
        if not reply:
            return []
        entries: list[Entry] = reply[0][1]
        return entries

    async def _claim(self, stream: str) -> list[Entry]:
        """Entries read by a consumer that went quiet for claim_idle_ms (it died)."""
        now = time.monotonic()
        if now < self._claim_due.get(stream, 0.0):
            return []
        cursor = self._claim_cursor.get(stream, b"0-0")
        try:
            reply = await self.redis.xautoclaim(
                stream,
                SINK_GROUP,
                self.consumer,
                self.claim_idle_ms,
                cursor,
                count=min(self.batch, REDIS_SLICE),
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups([stream])
            return []
        next_cursor: bytes = reply[0]
        self._claim_cursor[stream] = next_cursor
        if next_cursor in (b"0-0", "0-0"):  # scanned every pending entry: look again later
            self._claim_due[stream] = now + self.claim_idle_ms / 2000
        claimed = [(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]
        if claimed:
            self.counters.claimed += len(claimed)
            log.warning("took over %d idle entries of %s", len(claimed), stream)
        return claimed

    async def _acknowledge(self, stream: str, ids: list[bytes]) -> None:
        for first in range(0, len(ids), REDIS_SLICE):
            await self._ack(
                keys=[stream], args=[SINK_GROUP, b" ".join(ids[first : first + REDIS_SLICE])]
            )

    # -- Postgres side -------------------------------------------------------------------

    def _rows(
        self, stream: str, batch: list[Entry], *, checked: bool = False
    ) -> tuple[list[Row], list[Row]]:
        """(postbacks rows, calls rows) of a batch of either kind of stream.

        Unless `checked`, a log entry's values go into its row as they are (the hot
        loop); `checked` looks at every value, for a batch whose COPY was refused.
        """
        if stream not in self._postback_streams:
            return [], self._call_rows(stream, batch)
        postbacks: list[Row] = []
        calls: list[Row] = []
        unknown: list[bytes] = []
        for entry_id, fields in batch:
            raw = fields.get(ENTRY_FIELD, b"") if fields else b""
            try:
                doc = _loads(raw) if checked else orjson.loads(raw)  # see _loads
                snapshot = None
                if fields is not None and len(fields) > 1:  # an outcome, a call, or both
                    code = fields.get(OUTCOME_FIELD)
                    if code is not None:  # the write script's outcome decides the status
                        outcome = _outcome(code)
                        if outcome is None:
                            unknown.append(code)
                        else:
                            doc["status"], doc["error"], doc["http_status"] = outcome
                    if (found := fields.get(CALL_FIELD)) is not None:
                        snapshot = _snapshot(found, stream, entry_id, checked)
                        if snapshot is not None and doc.get("call_uuid") is None:
                            doc["call_uuid"] = snapshot.get("u")  # the call the tags went to
                if snapshot is None:
                    snapshot = doc.get("call")  # entries written before field c existed
                try:
                    row = postback_row(doc) if checked else _POSTBACK_VALUES(doc)
                except KeyError:  # an entry without some value: its row is made with care
                    row = postback_row(doc)
            except _ENTRY_ERRORS:  # not JSON, not an object, a value that cannot be
                log.error("kept unreadable log entry %s %r as is", stream, entry_id)
                postbacks.append(undecodable_row(stream, entry_id, raw))
                continue
            postbacks.append(row)
            if snapshot is not None:
                try:
                    calls.append(call_row(snapshot))
                except _ENTRY_ERRORS:
                    log.error("dropped unreadable call snapshot in %s %r", stream, entry_id)
        if unknown:
            log.warning(
                "%d log entries of %s have an unknown outcome code (first: %r):"
                " logged with the status the entry gives",
                len(unknown),
                stream,
                unknown[0],
            )
        return postbacks, calls

    @staticmethod
    def _call_rows(stream: str, batch: list[Entry]) -> list[Row]:
        calls: list[Row] = []
        for entry_id, fields in batch:
            try:
                calls.append(call_row(_loads(fields.get(SNAPSHOT_FIELD) if fields else None)))
            except _ENTRY_ERRORS:
                log.error("dropped unreadable call snapshot in %s %r", stream, entry_id)
        return calls

    async def _store(
        self,
        stream: str,
        batch: list[Entry],
        stop: asyncio.Event | None,
        *,
        fresh: bool,
    ) -> None:
        """Commit the batch's rows, then acknowledge it: retried until both are done.

        `fresh`: the batch was never delivered before, so its rows are most likely not
        in Postgres yet (a taken-over batch may be).
        """
        postbacks, calls = self._rows(stream, batch)
        backoff = Backoff(BACKOFF_FIRST, self.max_backoff)
        committed = False
        while True:
            try:
                if not committed:
                    try:
                        await self._commit(postbacks, calls, fresh=fresh)
                    except _BadData as exc:
                        log.warning("rows of %s refused (%s), checking each", stream, exc)
                        postbacks, calls = self._rows(stream, batch, checked=True)
                        await self._commit(postbacks, calls, fresh=fresh)
                    committed = True
                await self._acknowledge(stream, [entry_id for entry_id, _ in batch])
                break
            except Exception as exc:  # Postgres or Redis down: the batch waits, never dropped
                self.counters.retries += 1
                delay = backoff.take()
                log.warning(
                    "%s of %d entries of %s failed (%s: %s), retrying in %.1f s",
                    "acknowledging" if committed else "committing",
                    len(batch),
                    stream,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if stop is None:
                    await asyncio.sleep(delay)
                elif await _sleep_unless(stop, delay):
                    raise _Stopped from exc
        self.counters.batches += 1
        self.counters.rows += len(postbacks)
        self.counters.calls += len(calls)

    async def _commit(self, postbacks: list[Row], calls: list[Row], *, fresh: bool = False) -> None:
        """Write the rows in one transaction; _BadData if some value was refused."""
        if not postbacks and not calls:
            return
        async with self.pool.acquire() as conn:
            try:
                await self._ensure_partitions(conn, postbacks)
                if fresh:
                    try:
                        await self._insert(conn, postbacks, calls, direct=True)
                        return
                    except asyncpg.UniqueViolationError:
                        log.info("%d rows came again: adding the missing ones", len(postbacks))
                await self._insert(conn, postbacks, calls, direct=False)
            except _DATA_ERRORS as exc:
                raise _BadData(f"{type(exc).__name__}: {exc}") from exc

    async def _ensure_partitions(self, conn: Conn, postbacks: list[Row]) -> None:
        new_days = {row[0] // DAY_MS for row in postbacks} - self._days
        for day in sorted(new_days):
            await conn.fetchval(
                "SELECT postbacks_ensure_partition($1)", EPOCH_DATE + timedelta(days=day)
            )
            self._days.add(day)

    @staticmethod
    async def _insert(conn: Conn, postbacks: list[Row], calls: list[Row], *, direct: bool) -> None:
        """`direct`: COPY the postbacks into their table, which fails on a row that is
        there already; else through the temp table, adding only the missing rows."""
        if direct and not calls:  # one statement: all or nothing without a transaction
            await conn.copy_records_to_table(
                "postbacks", records=postbacks, columns=POSTBACK_COLUMNS
            )
            return
        async with conn.transaction():
            if postbacks and direct:
                await conn.copy_records_to_table(
                    "postbacks", records=postbacks, columns=POSTBACK_COLUMNS
                )
            elif postbacks:
                await conn.copy_records_to_table(
                    "postbacks_stage", records=postbacks, columns=POSTBACK_COLUMNS
                )
                await conn.execute(_INSERT_POSTBACKS)
            if calls:
                await conn.copy_records_to_table("calls_stage", records=calls, columns=CALL_COLUMNS)
                await conn.execute(_UPSERT_CALLS)

    # -- maintenance (the workers' cron job) ---------------------------------------------

    async def maintain(self, retention_days: int, today: date | None = None) -> dict[str, int]:
        """Create the log's day partitions ahead, drop those past retention, and remove
        consumers that are long gone; what was done."""
        today = utc_today() if today is None else today
        created = 0
        async with self.pool.acquire() as conn:
            for ahead in range(-1, PARTITION_DAYS_AHEAD + 1):
                created += bool(
                    await conn.fetchval(
                        "SELECT postbacks_ensure_partition($1)", today + timedelta(days=ahead)
                    )
                )
            dropped: int = await conn.fetchval(
                "SELECT postbacks_drop_partitions($1)", today - timedelta(days=retention_days)
            )
        self._days.clear()  # dropped partitions must be made again if their day comes back
        removed = await self._prune_consumers()
        return {"created": created, "dropped": dropped, "consumers_removed": removed}

    async def _prune_consumers(self) -> int:
        removed = 0
        for stream in self.streams:
            try:
                consumers = await self.redis.xinfo_consumers(stream, SINK_GROUP)
            except ResponseError:  # no stream or group yet
                continue
            for consumer in consumers:
                name = consumer["name"]
                if name in (self.consumer, self.consumer.encode()):
                    continue
                if consumer["pending"] == 0 and consumer["idle"] >= CONSUMER_MAX_IDLE_MS:
                    await self.redis.xgroup_delconsumer(stream, SINK_GROUP, name)
                    removed += 1
        return removed


async def _sleep_unless(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` s or until `stop` is set; True if it was set."""
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True
