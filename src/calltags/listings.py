"""Listings of the durable records in Postgres: GET /admin/postbacks (the postback log)
and GET /admin/calls (call records), newest first, filtered, paged by an opaque cursor.
The log page (`logpage`) reads the same pages.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from calltags import errors, phone
from calltags.errors import ApiError, StoreUnavailable
from calltags.http import JSONResponse, require_bearer
from calltags.services import services
from calltags.store import STATUS_COMPLETED, STATUS_LIVE, STATUS_STORED
from calltags.times import iso

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
STATUSES = (STATUS_STORED, STATUS_LIVE, STATUS_COMPLETED)
# Besides a status string or an error code, `status` may be one of these.
STATUS_GROUPS = {"accepted": "error IS NULL", "rejected": "error IS NOT NULL"}
CALL_STATES = ("in_progress", "completed")
POSTBACK_FILTERS = frozenset(
    ("publisher_id", "key_id", "caller_number", "status", "since", "until", "limit", "cursor")
)
CALL_FILTERS = frozenset(
    ("publisher_id", "campaign", "caller_number", "state", "since", "until", "limit", "cursor")
)
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_POSTBACK_SELECT = (
    "SELECT received_at, id, method, publisher_id, key_id, key_prefix, caller_raw,"
    " caller_number, call_uuid, tags, status, error, http_status, remote_addr, user_agent,"
    " latency_us FROM postbacks"
)
_CALL_SELECT = (
    "SELECT call_uuid, caller_number, publisher_id, campaign, state, started_at, ended_at,"
    " tags, tag_sources, updated_at FROM calls"
)


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class _Query:
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


def _present(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is not None and "\x00" in value:  # Postgres text cannot hold it
        raise errors.invalid_request(f"{name} must not contain NUL")
    return value.strip() if value is not None and value.strip() else None


def _whole(params: Mapping[str, str], name: str) -> int | None:
    raw = _present(params, name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise errors.invalid_request(f"{name} must be a positive whole number")
    return int(raw)


def _text(params: Mapping[str, str], name: str, limit: int) -> str | None:
    raw = _present(params, name)
    if raw is not None and len(raw) > limit:
        raise errors.invalid_request(f"{name} is longer than {limit} characters")
    return raw


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = _present(params, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise errors.invalid_request(
            f"{name} must be an ISO 8601 time, e.g. 2026-11-29T12:00:00Z"
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _caller(params: Mapping[str, str], region: str) -> str | None:
    raw = _present(params, "caller_number")
    if raw is None:
        return None
    try:
        return phone.normalize(raw, region)
    except ApiError as exc:
        raise errors.invalid_request(f"caller_number {raw[:64]!r} is not a phone number") from exc


def _limit(params: Mapping[str, str]) -> int:
    limit = _whole(params, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.invalid_request(f"limit must be from 1 to {MAX_LIMIT}")
    return limit


def encode_cursor(at: datetime, key: str) -> str:
    """The opaque cursor after the row (at, key): base64url of [epoch µs, key]."""
    micros = (at - _EPOCH) // _MICROSECOND
    return base64.urlsafe_b64encode(orjson.dumps([micros, key])).decode().rstrip("=")


def _cursor(params: Mapping[str, str]) -> tuple[datetime, str] | None:
    raw = _present(params, "cursor")
    if raw is None:
        return None
    try:
        micros, key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(micros, int) or not isinstance(key, str) or "\x00" in key:
            raise ValueError(raw)
        return _EPOCH + micros * _MICROSECOND, key
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise errors.invalid_request("cursor is not one this API returned") from exc


def _unknown(params: Mapping[str, str], allowed: frozenset[str]) -> None:
    extra = sorted(set(params) - allowed)
    if extra:
        raise errors.invalid_request(
            f"unknown parameter {extra[0][:64]!r}; filters: {', '.join(sorted(allowed))}"
        )


def _common(
    params: Mapping[str, str], region: str, time_column: str, key_column: str
) -> tuple[_Query, int]:
    query = _Query()
    caller = _caller(params, region)
    if caller is not None:
        query.add("caller_number = {}", caller)
    since, until = _time(params, "since"), _time(params, "until")
    if since is not None:
        query.add(f"{time_column} >= {{}}", since)
    if until is not None:
        query.add(f"{time_column} < {{}}", until)
    cursor = _cursor(params)
    if cursor is not None:
        at, key = cursor
        if key_column == "id":
            try:
                key = str(uuid.UUID(key))
            except ValueError as exc:
                raise errors.invalid_request("cursor is not one this API returned") from exc
            query.add(f"({time_column}, id) < ({{}}, {{}}::uuid)", at, key)
        else:
            query.add(f"({time_column}, {key_column}) < ({{}}, {{}})", at, key)
    return query, _limit(params)


def _status(query: _Query, value: str) -> None:
    if value in STATUS_GROUPS:
        query.clauses.append(STATUS_GROUPS[value])
    elif value in STATUSES:
        query.add("status = {}", value)
    elif _ERROR_CODE.fullmatch(value):
        query.add("error = {}", value)
    else:
        raise errors.invalid_request(
            "status must be accepted, rejected, a status string or an error code"
        )


def postback_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "received_at": iso(row["received_at"]),
        "method": row["method"],
        "publisher_id": row["publisher_id"],
        "key_id": row["key_id"],
        "key_prefix": row["key_prefix"],
        "caller_raw": row["caller_raw"],
        "caller_number": row["caller_number"],
        "call_uuid": row["call_uuid"],
        "tags": orjson.loads(row["tags"]),
        "status": row["status"],
        "error": row["error"],
        "http_status": row["http_status"],
        "remote_addr": row["remote_addr"],
        "user_agent": row["user_agent"],
        "latency_us": row["latency_us"],
    }


def call_record_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "call_uuid": row["call_uuid"],
        "caller_number": row["caller_number"],
        "state": row["state"],
        "tags": orjson.loads(row["tags"]),
        "tag_sources": orjson.loads(row["tag_sources"]),
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "publisher_id": row["publisher_id"],
        "campaign": row["campaign"],
        "updated_at": iso(row["updated_at"]),
    }


async def _page(
    pool: asyncpg.Pool,
    select: str,
    query: _Query,
    limit: int,
    time_column: str,
    key_column: str,
    item: Callable[[asyncpg.Record], dict[str, Any]],
) -> Page:
    sql = (
        f"{select}{query.where()} ORDER BY {time_column} DESC, {key_column} DESC LIMIT {limit + 1}"
    )
    try:
        rows: list[asyncpg.Record] = await pool.fetch(sql, *query.args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = None
    if more:
        cursor = encode_cursor(rows[-1][time_column], str(rows[-1][key_column]))
    return Page(items=[item(r) for r in rows], next_cursor=cursor)


async def postbacks_page(pool: asyncpg.Pool, params: Mapping[str, str], region: str) -> Page:
    """A page of the postback log; ApiError 422 `invalid_request` for a bad filter."""
    _unknown(params, POSTBACK_FILTERS)
    query, limit = _common(params, region, "received_at", "id")
    for name in ("publisher_id", "key_id"):
        value = _whole(params, name)
        if value is not None:
            query.add(f"{name} = {{}}", value)
    status = _present(params, "status")
    if status is not None:
        _status(query, status)
    return await _page(pool, _POSTBACK_SELECT, query, limit, "received_at", "id", postback_json)


async def calls_page(pool: asyncpg.Pool, params: Mapping[str, str], region: str) -> Page:
    """A page of call records, newest started first."""
    _unknown(params, CALL_FILTERS)
    query, limit = _common(params, region, "started_at", "call_uuid")
    publisher = _text(params, "publisher_id", 64)
    if publisher is not None:
        query.add("publisher_id = {}", publisher)
    campaign = _text(params, "campaign", 200)
    if campaign is not None:
        query.add("campaign = {}", campaign)
    state = _present(params, "state")
    if state is not None:
        if state not in CALL_STATES:
            raise errors.invalid_request(f"state must be one of {', '.join(CALL_STATES)}")
        query.add("state = {}", state)
    return await _page(
        pool, _CALL_SELECT, query, limit, "started_at", "call_uuid", call_record_json
    )


def _admin_region(request: Request) -> tuple[asyncpg.Pool, str]:
    svc = services(request)
    token = svc.settings.admin_token
    require_bearer(request, (str(token) if token else None,))
    return svc.pool, svc.settings.default_region


async def list_postbacks(request: Request) -> Response:
    pool, region = _admin_region(request)
    page = await postbacks_page(pool, request.query_params, region)
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})


async def list_calls(request: Request) -> Response:
    pool, region = _admin_region(request)
    page = await calls_page(pool, request.query_params, region)
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})
