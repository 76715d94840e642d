"""The durable records in Postgres, read: pages of the postback log and of the call
records, newest first, filtered, paged by an opaque cursor; one call's record, and the
counts the console shows beside publishers and keys. Postgres errors become
StoreUnavailable here, once."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from msgspec import Struct

from calltags import phone
from calltags.db import POSTGRES_ERRORS
from calltags.errors import ApiError, StoreBoundary, invalid_request
from calltags.models import (
    POSTBACK_STATUSES,
    STATUS_GROUPS,
    CallFilters,
    CallPage,
    CallRecord,
    PostbackEntry,
    PostbackFilters,
    PostbackPage,
    from_row,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_STATUS_GROUPS = dict(zip(STATUS_GROUPS, ("error IS NULL", "error IS NOT NULL"), strict=True))

_POSTBACK_SELECT = (
    "SELECT received_at, id, method, publisher_id, key_id, key_prefix, caller_raw,"
    " caller_number, call_uuid, tags, status, error, http_status, remote_addr, user_agent,"
    " latency_us, message, replayed FROM postbacks"
)
_CALL_SELECT = (
    "SELECT call_uuid, caller_number, publisher_id, campaign, state, started_at, ended_at,"
    " tags, tag_sources, updated_at FROM calls"
)


@dataclass
class Query:
    """A WHERE clause built from validated filters, with its $n arguments."""

    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def add(self, template: str, *values: Any) -> None:
        """`template` with {} for each value, e.g. "caller_number = {}"."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.clauses.append(template.format(*marks))

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        found = datetime.fromisoformat(value)
    except ValueError as exc:
        raise invalid_request(
            f"{name} must be an ISO 8601 time, e.g. 2026-11-29T12:00:00Z"
        ) from exc
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _caller(value: str | None, region: str) -> str | None:
    if value is None:
        return None
    try:
        return phone.normalize(value, region)
    except ApiError as exc:
        raise invalid_request(f"caller_number {value[:64]!r} is not a phone number") from exc


def encode_cursor(at: datetime, key: str) -> str:
    """The opaque cursor after the row (at, key): base64url of [epoch µs, key]."""
    micros = (at - _EPOCH) // _MICROSECOND
    return base64.urlsafe_b64encode(orjson.dumps([micros, key])).decode().rstrip("=")


def decode_cursor(raw: str | None) -> tuple[datetime, str] | None:
    if raw is None:
        return None
    try:
        micros, key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(micros, int) or not isinstance(key, str) or "\x00" in key:
            raise ValueError(raw)
        return _EPOCH + micros * _MICROSECOND, key
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise invalid_request("cursor is not one this API returned") from exc


def _common(
    filters: PostbackFilters | CallFilters, region: str, time_column: str, key_column: str
) -> Query:
    query = Query()
    caller = _caller(filters.caller_number, region)
    if caller is not None:
        query.add("caller_number = {}", caller)
    since, until = _time(filters.since, "since"), _time(filters.until, "until")
    if since is not None:
        query.add(f"{time_column} >= {{}}", since)
    if until is not None:
        query.add(f"{time_column} < {{}}", until)
    cursor = decode_cursor(filters.cursor)
    if cursor is not None:
        at, key = cursor
        if key_column == "id":
            try:
                key = str(uuid.UUID(key))
            except ValueError as exc:
                raise invalid_request("cursor is not one this API returned") from exc
            query.add(f"({time_column}, id) < ({{}}, {{}}::uuid)", at, key)
        else:
            query.add(f"({time_column}, {key_column}) < ({{}}, {{}})", at, key)
    return query


def _status(query: Query, value: str) -> None:
    """`value` is one of models.STATUS_FILTERS (the model checked it)."""
    if value in _STATUS_GROUPS:
        query.clauses.append(_STATUS_GROUPS[value])
    elif value in POSTBACK_STATUSES:
        query.add("status = {}", value)
    else:
        query.add("error = {}", value)


@dataclass(frozen=True)
class PublisherStats:
    """A publisher's usable keys and recent postbacks, as the console lists them."""

    keys: int
    postbacks: int
    accepted: int

    @property
    def share_accepted(self) -> float | None:
        """The accepted postbacks' share, 0..1; None without postbacks."""
        return self.accepted / self.postbacks if self.postbacks else None


def postback_entry(row: asyncpg.Record) -> PostbackEntry:
    return from_row(PostbackEntry, row, id=str(row["id"]), tags=orjson.loads(row["tags"]))


def call_record(row: asyncpg.Record) -> CallRecord:
    sources = orjson.loads(row["tag_sources"])
    return from_row(CallRecord, row, tags=orjson.loads(row["tags"]), tag_sources=sources)


def _equal(query: Query, filters: Struct, columns: tuple[str, ...]) -> None:
    """Each filter of `columns` given: that column equals it."""
    for column in columns:
        value = getattr(filters, column)
        if value is not None:
            query.add(f"{column} = {{}}", value)


class Records(StoreBoundary):
    driver_errors = POSTGRES_ERRORS

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def postbacks(self, filters: PostbackFilters, region: str) -> PostbackPage:
        """A page of the postback log; ApiError 422 `invalid_request` for a bad filter."""
        query = _common(filters, region, "received_at", "id")
        _equal(query, filters, ("publisher_id", "key_id", "call_uuid", "replayed"))
        if filters.status is not None:
            _status(query, filters.status)
        items, cursor = await self._page(
            _POSTBACK_SELECT, query, filters.limit, "received_at", "id", postback_entry
        )
        return PostbackPage(items=items, next_cursor=cursor)

    async def calls(self, filters: CallFilters, region: str) -> CallPage:
        """A page of call records, newest started first."""
        query = _common(filters, region, "started_at", "call_uuid")
        _equal(query, filters, ("publisher_id", "campaign", "state"))
        items, cursor = await self._page(
            _CALL_SELECT, query, filters.limit, "started_at", "call_uuid", call_record
        )
        return CallPage(items=items, next_cursor=cursor)

    async def _page(
        self,
        select: str,
        query: Query,
        limit: int,
        time_column: str,
        key_column: str,
        item: Callable[[asyncpg.Record], Any],
    ) -> tuple[list[Any], str | None]:
        sql = (
            f"{select}{query.where()} ORDER BY {time_column} DESC, {key_column} DESC"
            f" LIMIT {limit + 1}"
        )
        rows: list[asyncpg.Record] = await self.pool.fetch(sql, *query.args)
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = None
        if more:
            cursor = encode_cursor(rows[-1][time_column], str(rows[-1][key_column]))
        return [item(r) for r in rows], cursor

    # -- what the console shows beside the records ------------------------------------------

    async def call(self, call_uuid: str) -> CallRecord | None:
        """The call's record; None until the workers have written it (or never)."""
        row = await self.pool.fetchrow(f"{_CALL_SELECT} WHERE call_uuid = $1", call_uuid)
        return call_record(row) if row is not None else None

    async def publisher_stats(self, since: datetime) -> dict[int, PublisherStats]:
        """Each publisher's usable keys and postbacks since `since`, by publisher id (one
        index range of `postbacks_publisher` a publisher)."""
        rows = await self.pool.fetch(
            "SELECT p.id,"
            " (SELECT count(*) FROM postback_keys k"
            "  WHERE k.publisher_id = p.id AND k.revoked_at IS NULL) AS keys,"
            " s.postbacks, s.accepted"
            " FROM publishers p CROSS JOIN LATERAL ("
            "  SELECT count(*) AS postbacks, count(*) FILTER (WHERE b.error IS NULL) AS accepted"
            "  FROM postbacks b WHERE b.publisher_id = p.id AND b.received_at >= $1) s",
            since,
        )
        return {
            row["id"]: PublisherStats(row["keys"], row["postbacks"], row["accepted"])
            for row in rows
        }

    async def key_postbacks(self, publisher_id: int, since: datetime) -> dict[int, int]:
        """How many postbacks each key of the publisher served since `since`, by key id
        (one index range of `postbacks_key` a key)."""
        rows = await self.pool.fetch(
            "SELECT k.id, (SELECT count(*) FROM postbacks b"
            "  WHERE b.key_id = k.id AND b.received_at >= $2) AS postbacks"
            " FROM postback_keys k WHERE k.publisher_id = $1",
            publisher_id,
            since,
        )
        return {row["id"]: row["postbacks"] for row in rows}
