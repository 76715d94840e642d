"""Erasing a caller's data: what is left of a postback, a call snapshot or a row once the
caller's number and tag values are taken out, the erase's Postgres part and its
record, and the workers' side (`Redactor`).

An erase removes the caller from Redis (store.erase_caller), rewrites the log entries
still in the Redis streams without the number (store.redact_streams), then, in one
transaction holding the erasure lock exclusively, records the erase and redacts the
caller's `postbacks` and `calls` rows. The workers hold the same lock shared while they
write a batch, and redact the rows of a caller erased after those rows' time: a batch
in a worker's hands during the erase is committed before the erase redacts, or after
its record, which the worker then sees. Rows are kept (their publisher, key, status and
times still count); a redacted postback has no caller, no caller as posted, every tag
value "" and a refusal's message the error table's, and a redacted call the caller "".

The record keeps an HMAC-SHA256 of the number keyed with the erasure salt
(CALLTAGS_ERASURE_SALT, or when unset the salt migration 008 made in Postgres), never
the number; the web processes and workers must use the same salt.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import orjson

from calltags.db import POSTGRES_ERRORS
from calltags.errors import ERRORS, StoreBoundary
from calltags.log import ENTRY_FIELD
from calltags.models import Erasure
from calltags.rows import CALL_COLUMNS, POSTBACK_COLUMNS, Row
from calltags.store import CALL_FIELD, SNAPSHOT_FIELD
from calltags.times import iso_ms, to_ms

REDACTED = ""  # a tag value, or a call's caller, once erased
_LOCK = "SELECT pg_advisory_xact_lock{}(hashtext('calltags.erasure'))"
_MESSAGES = orjson.dumps({error.code: error.message for error in ERRORS.values()}).decode()
_REDACTED_TAGS = (
    "coalesce((SELECT jsonb_object_agg(name, '') FROM jsonb_object_keys(tags) AS name), '{}')"
)
_P = {name: n for n, name in enumerate(POSTBACK_COLUMNS)}
_C = {name: n for n, name in enumerate(CALL_COLUMNS)}


def number_hash(salt: bytes, number: str) -> str:
    return hmac.new(salt, number.encode(), hashlib.sha256).hexdigest()


def _packed_tags(tags: dict[str, str]) -> dict[str, str]:
    """A call JSON's tags ("publisher_id:key_id:set_at_ms|value") without their values."""
    return {name: packed.partition("|")[0] + "|" for name, packed in tags.items()}


def redact_entry(doc: dict[str, Any]) -> dict[str, Any]:
    """A postback log entry (log.make_entry) without the caller and tag values."""
    error = doc.get("error")
    return {
        **doc,
        "caller_number": None,
        "caller_raw": None,
        "tags": dict.fromkeys(doc.get("tags") or {}, REDACTED),
        "message": ERRORS[error].message if error in ERRORS else None,
        **({"call": redact_call(doc["call"])} if isinstance(doc.get("call"), dict) else {}),
    }


def redact_call(doc: dict[str, Any]) -> dict[str, Any]:
    """A call's JSON (see lua/connect-3.lua) without the caller and tag values."""
    return {**doc, "n": REDACTED, "t": _packed_tags(doc.get("t") or {})}


def stream_redaction(number: str) -> Any:
    """The store.Redaction of a caller: a log stream entry's fields rewritten when the
    entry is the caller's."""
    needle = number.encode()

    def redact(fields: dict[bytes, bytes]) -> dict[bytes, bytes] | None:
        if not any(needle in value for value in fields.values()):
            return None
        changed = dict(fields)
        try:
            if ENTRY_FIELD in fields:
                entry = orjson.loads(fields[ENTRY_FIELD])
                if entry.get("caller_number") != number:
                    return None
                changed[ENTRY_FIELD] = orjson.dumps(redact_entry(entry))
            call_field = CALL_FIELD if ENTRY_FIELD in fields else SNAPSHOT_FIELD
            if call_field in fields:
                call = orjson.loads(fields[call_field])
                if call.get("n") != number:
                    return None if ENTRY_FIELD not in fields else changed
                changed[call_field] = orjson.dumps(redact_call(call))
        except (ValueError, TypeError, AttributeError):  # not an entry of ours: left alone
            return None
        return changed

    return redact


class Salt:
    """The erasure salt: the setting's, else the one Postgres keeps (read once)."""

    def __init__(self, setting: str | None):
        self._salt = setting.encode() if setting else None

    async def get(self, conn: asyncpg.Connection | asyncpg.Pool | Any) -> bytes:
        if self._salt is None:
            found = await conn.fetchval("SELECT salt FROM erasure_salt LIMIT 1")
            self._salt = str(found).encode()
        return self._salt


class Erasures(StoreBoundary):
    """The erase's Postgres part, and its records."""

    driver_errors = POSTGRES_ERRORS

    def __init__(self, pool: asyncpg.Pool, salt: str | None):
        self.pool = pool
        self.salt = Salt(salt)

    async def erase(
        self, number: str, pending_tags: int, calls_in_redis: int, log_entries: int
    ) -> Erasure:
        """Redact the caller's rows and record the erase with the counts given (what
        Redis held)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK.format(""))  # waits for the batches being written
            hashed = number_hash(await self.salt.get(conn), number)
            postbacks = await conn.execute(
                f"UPDATE postbacks SET caller_number = NULL, caller_raw = NULL,"
                f" tags = {_REDACTED_TAGS}, message = $2::jsonb ->> error"
                " WHERE caller_number = $1",
                number,
                _MESSAGES,
            )
            calls = await conn.execute(
                f"UPDATE calls SET caller_number = '', tags = {_REDACTED_TAGS}"
                " WHERE caller_number = $1",
                number,
            )
            # Its webhook deliveries' bodies and URLs hold the number and the tags.
            await conn.execute("DELETE FROM webhook_deliveries WHERE caller_number = $1", number)
            row = await conn.fetchrow(
                "INSERT INTO caller_erasures (number_hash, pending_tags, calls_in_redis,"
                " log_entries, postbacks, call_records) VALUES ($1, $2, $3, $4, $5, $6)"
                " RETURNING erased_at",
                hashed,
                pending_tags,
                calls_in_redis,
                log_entries,
                _count(postbacks),
                _count(calls),
            )
        assert row is not None
        return Erasure(
            erased_at=iso_ms(to_ms(row["erased_at"])),
            number_hash=hashed,
            pending_tags=pending_tags,
            calls_in_redis=calls_in_redis,
            log_entries=log_entries,
            postbacks=_count(postbacks),
            call_records=_count(calls),
        )


def _count(status: str) -> int:
    """The row count of a command's status, e.g. "UPDATE 3"."""
    return int(status.rpartition(" ")[2] or 0)


class Redactor:
    """The workers' side: inside a batch's transaction, the erasure lock held shared,
    the batch's rows of callers erased after the rows' time are redacted."""

    def __init__(self, salt: str | None):
        self.salt = Salt(salt)

    async def hold(self, conn: Any, rows: Iterable[int]) -> list[tuple[str, int]]:
        """Take the lock (shared) and read the erasures since the oldest of `rows`' times
        (Unix ms): (number hash, erased at in Unix ms) each; mostly none."""
        await conn.execute(_LOCK.format("_shared"))
        oldest = min(rows, default=None)
        if oldest is None:
            return []
        found = await conn.fetch(
            "SELECT number_hash, erased_at FROM caller_erasures WHERE erased_at >= $1", oldest
        )
        return [(row["number_hash"], row["erased_at"]) for row in found]

    async def redact(
        self, conn: Any, erased: list[tuple[str, int]], postbacks: list[Row], calls: list[Row]
    ) -> tuple[list[Row], list[Row]]:
        """The rows with those of erased callers redacted (rows of the pool's codecs:
        times in Unix ms, JSON as Python values)."""
        if not erased:
            return postbacks, calls
        erased_since = await self._erased_since(conn, erased)
        kept_postbacks = [
            _redacted_postback(row) if erased_since(row[_P["caller_number"]], row[0]) else row
            for row in postbacks
        ]
        kept_calls = [
            _redacted_call(row)
            if erased_since(row[_C["caller_number"]], row[_C["started_at"]])
            else row
            for row in calls
        ]
        return kept_postbacks, kept_calls

    async def kept_deliveries(
        self, conn: Any, erased: list[tuple[str, int]], deliveries: list[Row], at: tuple[int, int]
    ) -> list[Row]:
        """The webhook deliveries (outbox.py rows) but those of callers erased after
        their event: `at` = the rows' (caller number, event time in Unix ms) columns."""
        if not erased or not deliveries:
            return deliveries
        erased_since = await self._erased_since(conn, erased)
        number, when = at
        return [row for row in deliveries if not erased_since(row[number], row[when])]

    async def _erased_since(
        self, conn: Any, erased: list[tuple[str, int]]
    ) -> Callable[[Any, int], bool]:
        """Whether a number was erased at or after a time (Unix ms)."""
        salt = await self.salt.get(conn)
        latest: dict[str, int] = {}
        for hashed, at in erased:
            latest[hashed] = max(at, latest.get(hashed, at))
        hashes: dict[str, str] = {}

        def erased_since(number: Any, at: int) -> bool:
            if not number:
                return False
            if number not in hashes:
                hashes[number] = number_hash(salt, str(number))
            until = latest.get(hashes[number])
            return until is not None and at <= until

        return erased_since


def _redacted_postback(row: Row) -> Row:
    values = list(row)
    error = values[_P["error"]]
    values[_P["caller_number"]] = None
    values[_P["caller_raw"]] = None
    values[_P["tags"]] = dict.fromkeys(values[_P["tags"]] or {}, REDACTED)
    values[_P["message"]] = ERRORS[error].message if error in ERRORS else None
    return tuple(values)


def _redacted_call(row: Row) -> Row:
    values = list(row)
    values[_C["caller_number"]] = REDACTED
    values[_C["tags"]] = dict.fromkeys(values[_C["tags"]] or {}, REDACTED)
    return tuple(values)
