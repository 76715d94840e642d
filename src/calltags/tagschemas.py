"""Declared tag schemas: the record in Postgres, its mirror in Redis (one string a
schema, written whenever the record changes), and `TagSchemas.rules`, the postback's
schema step: each tag checked against its rule and stored in its canonical text.

A web process keeps each schema it read for at most CALLTAGS_KEY_CACHE_SECONDS (<= 1 s),
as `keycache` keeps keys, so that a schema's change or removal reaches every process
within that time. A schema missing from the mirror (after a Redis restart) is read
from Postgres and mirrored again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import idna
import msgspec

from calltags import phone
from calltags.db import POSTGRES_ERRORS
from calltags.errors import ApiError, StoreBoundary
from calltags.keycache import KeyInfo
from calltags.keys import KeySpace
from calltags.models import NamedTagSchema, TagRule, TagSchema
from calltags.patterns import fullmatches
from calltags.store import REDIS_ERRORS, RedisClient
from calltags.times import iso_ms, to_ms

MAX_NUMBER_EXPONENT = 308  # a number beyond 1e308 (a double's range) is refused
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_BOOLEANS = {
    "true": "true",
    "1": "true",
    "yes": "true",
    "false": "false",
    "0": "false",
    "no": "false",
}
_EMAIL_LOCAL = re.compile(r"[^\s@\"(),:;<>\[\\\]]{1,64}")
_URL_SCHEMES = ("http", "https")
_COLUMNS = "name, body, created_at, updated_at"


class Unfit(ValueError):
    """A value does not fit its rule; the message names the rule."""


class TagSchemaNotFound(Exception):
    pass


class TagSchemaInUse(Exception):
    """Usable keys name the schema: their ids."""


def _integer(value: str, rule: TagRule, region: str) -> str:
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        raise Unfit("must be an integer")
    number = int(text)
    _bounds(number, rule)
    return str(number)


def _number(value: str, rule: TagRule, region: str) -> str:
    text = value.strip()
    if not _NUMBER.fullmatch(text):
        raise Unfit("must be a number")
    try:
        number = Decimal(text)
    except InvalidOperation as exc:  # the pattern lets through only what Decimal reads
        raise Unfit("must be a number") from exc
    if number and abs(number.adjusted()) > MAX_NUMBER_EXPONENT:
        raise Unfit("must be a number within ±1e308")
    _bounds(float(number), rule)
    if not number:
        return "0"
    canonical = format(number.normalize(), "f")
    return canonical


def _bounds(number: float, rule: TagRule) -> None:
    if rule.min is not None and number < rule.min:
        raise Unfit(f"must be at least {rule.min:g}")
    if rule.max is not None and number > rule.max:
        raise Unfit(f"must be at most {rule.max:g}")


def _string(value: str, rule: TagRule, region: str) -> str:
    if rule.max_length is not None and len(value) > rule.max_length:
        raise Unfit(f"must be at most {rule.max_length} characters")
    if rule.pattern is not None and not fullmatches(rule.pattern, value):
        raise Unfit(f"must match the pattern {rule.pattern!r}")
    return value


def _boolean(value: str, rule: TagRule, region: str) -> str:
    found = _BOOLEANS.get(value.strip().lower())
    if found is None:
        raise Unfit("must be true, false, 1, 0, yes or no")
    return found


def _enum(value: str, rule: TagRule, region: str) -> str:
    assert rule.values is not None  # the model requires them
    wanted = value.strip().casefold()
    for declared in rule.values:
        if declared.casefold() == wanted:
            return declared
    shown = ", ".join(rule.values[:20]) + (", ..." if len(rule.values) > 20 else "")
    raise Unfit(f"must be one of: {shown}")


def _date(value: str, rule: TagRule, region: str) -> str:
    text = value.strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).date().isoformat()
    except ValueError as exc:
        raise Unfit("must be a date, YYYY-MM-DD") from exc


def _email(value: str, rule: TagRule, region: str) -> str:
    local, at, domain = value.strip().rpartition("@")
    if not at or not _EMAIL_LOCAL.fullmatch(local) or "." not in domain:
        raise Unfit("must be an email address")
    try:
        idna.encode(domain, uts46=True)
    except UnicodeError as exc:  # idna.IDNAError and its kin
        raise Unfit("must be an email address (its domain is not valid)") from exc
    return f"{local}@{domain.lower()}"


def _phone(value: str, rule: TagRule, region: str) -> str:
    try:
        return phone.normalize(value, region)
    except ApiError as exc:
        raise Unfit("must be a phone number") from exc


def _url(value: str, rule: TagRule, region: str) -> str:
    text = value.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError as exc:
        raise Unfit("must be an http or https URL") from exc
    if parts.scheme.lower() not in _URL_SCHEMES or not host or any(c.isspace() for c in text):
        raise Unfit("must be an http or https URL")
    netloc = parts.netloc.rpartition("@")
    lowered = netloc[0] + netloc[1] + netloc[2].lower()
    return urlunsplit((parts.scheme.lower(), lowered, parts.path, parts.query, parts.fragment))


_NORMALIZERS: dict[str, Callable[[str, TagRule, str], str]] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "enum": _enum,
    "date": _date,
    "email": _email,
    "phone": _phone,
    "url": _url,
}


def conform(
    schema: TagSchema, name: str, tags: dict[str, str], region: str
) -> tuple[dict[str, str], list[str]]:
    """(the tags in their canonical text, the undeclared tags left out) under `schema`
    (named `name`); ApiError 422 `invalid_tag`, `missing_tag` or `unknown_tag`."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for tag, value in tags.items():
        rule = schema.tags.get(tag)
        if rule is None:
            if schema.unknown == "reject":
                raise ApiError(
                    "unknown_tag", f"tag {tag!r} is not declared by the tag schema {name!r}"
                )
            if schema.unknown == "drop":
                dropped.append(tag)
            else:
                kept[tag] = value
            continue
        try:
            kept[tag] = _NORMALIZERS[rule.type](value, rule, region)
        except Unfit as exc:
            raise ApiError("invalid_tag", f"tag {tag!r} ({rule.type}) {exc}") from exc
    for tag, rule in schema.tags.items():
        if rule.required and tag not in tags:
            raise ApiError("missing_tag", f"tag {tag!r} is required by the tag schema {name!r}")
    if not kept:
        raise ApiError(
            "no_tags", f"the tag schema {name!r} left out every tag: {', '.join(dropped)}"
        )
    return kept, dropped


# The schema step of a key (TagSchemas.rules).
Conform: TypeAlias = Callable[[dict[str, str]], tuple[dict[str, str], list[str]]]


def _as_given(tags: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    return tags, []


def _named(row: asyncpg.Record) -> NamedTagSchema:
    schema = msgspec.json.decode(row["body"], type=TagSchema)
    return NamedTagSchema(
        name=row["name"],
        tags=schema.tags,
        unknown=schema.unknown,
        created_at=iso_ms(to_ms(row["created_at"])),
        updated_at=iso_ms(to_ms(row["updated_at"])),
    )


class TagSchemas(StoreBoundary):
    """The tag schemas: Postgres the record, Redis the mirror, and a cache of <= `ttl`
    seconds in this process for the hot path."""

    driver_errors = (*POSTGRES_ERRORS, *REDIS_ERRORS)

    def __init__(
        self, pool: asyncpg.Pool, redis: RedisClient, keys: KeySpace, ttl: float, region: str
    ):
        self.pool = pool
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.region = region
        self._cache: dict[str, tuple[float, TagSchema | None]] = {}

    # -- the postback's step --------------------------------------------------------------

    def known(self, key: KeyInfo) -> Conform | None:
        """`rules` without a read, or None when it would read the schema."""
        name = key.tag_schema
        if name is None:
            return _as_given
        hit = self._cache.get(name)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return self._step(name, hit[1])

    async def rules(self, key: KeyInfo) -> Conform:
        """The key's schema step, read once for a batch of postbacks: a function of a
        postback's tags giving them as the key's tag schema keeps them, and those it
        dropped; the tags as given when the key names none (or its schema is gone)."""
        name = key.tag_schema
        if name is None:
            return _as_given
        return self._step(name, await self.current(name))

    def _step(self, name: str, schema: TagSchema | None) -> Conform:
        if schema is None:
            return _as_given
        region = self.region
        return lambda tags: conform(schema, name, tags, region)

    async def current(self, name: str) -> TagSchema | None:
        """The schema `name` as this process knows it (<= `ttl` s old); None: no such."""
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        raw = await self.redis.get(self.keys.tag_schema(name))
        if raw is not None:
            schema: TagSchema | None = msgspec.json.decode(raw, type=TagSchema)
        else:
            found = await self._row(name)
            schema = None
            if found is not None:
                schema = msgspec.json.decode(found["body"], type=TagSchema)
                await self.redis.set(self.keys.tag_schema(name), found["body"])
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[name] = (now + self.ttl, schema)
        return schema

    # -- the admin API's ---------------------------------------------------------------------

    async def put(self, name: str, schema: TagSchema) -> tuple[NamedTagSchema, bool]:
        """Create or replace the schema; (as stored, whether it is new)."""
        body = msgspec.json.encode(schema)
        row = await self.pool.fetchrow(
            "INSERT INTO tag_schemas (name, body) VALUES ($1, $2::jsonb)"
            " ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body, updated_at = now()"
            f" RETURNING {_COLUMNS}, (xmax = 0) AS created",
            name,
            body.decode(),
        )
        assert row is not None
        await self.redis.set(self.keys.tag_schema(name), body)
        return _named(row), row["created"]

    async def get(self, name: str) -> NamedTagSchema:
        row = await self._row(name)
        if row is None:
            raise TagSchemaNotFound(name)
        return _named(row)

    async def list(self) -> list[NamedTagSchema]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM tag_schemas ORDER BY name")
        return [_named(row) for row in rows]

    async def delete(self, name: str) -> NamedTagSchema:
        """Remove the schema; TagSchemaInUse while a usable key names it (a revoked
        key's reference is cleared)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM tag_schemas WHERE name = $1 FOR UPDATE", name
            )
            if row is None:
                raise TagSchemaNotFound(name)
            users = await conn.fetch(
                "SELECT id FROM postback_keys WHERE tag_schema = $1 AND revoked_at IS NULL"
                " ORDER BY id FOR SHARE",
                name,
            )
            if users:
                raise TagSchemaInUse([user["id"] for user in users])
            await conn.execute("DELETE FROM tag_schemas WHERE name = $1", name)
        await self.redis.delete(self.keys.tag_schema(name))
        return _named(row)

    async def _row(self, name: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM tag_schemas WHERE name = $1", name
        )
        return row
