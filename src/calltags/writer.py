"""The sink's Postgres side: its pool, whose codecs take the rows as rows.py builds
them, and a batch's rows written in one go.

Each batch is one transaction, which first takes the erasure lock shared and redacts
the rows of callers erased since the rows' time (erasure.Redactor). A batch of new
entries is COPYed straight into `postbacks`; if some of its rows are there already
(the batch was delivered before, say by a worker that died between commit and
acknowledgement), the COPY fails on the primary key, the transaction is rolled back,
and the batch goes the careful way instead: COPY into a temp table, then INSERT ... ON
CONFLICT DO NOTHING on the entry id. Entries taken over from a dead worker go the
careful way from the start. Call records go through a temp table and are replaced only
by a higher version. A batch's webhook deliveries (outbox.py) are inserted in the same
transaction, each at most once. Amended rows (a request answered 503 after its write,
see store.ANSWER_FIELD) replace the answer of the row of the same request, or come
first: the first row then finds its place taken.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import orjson

from calltags.erasure import Redactor
from calltags.outbox import INSERT_OUTBOX, OUTBOX_ERASE_COLUMNS, columns
from calltags.partitions import Conn, Partitions
from calltags.rows import CALL_COLUMNS, POSTBACK_COLUMNS, Row

log = logging.getLogger("calltags.sink")

PG_EPOCH_MS = 946_684_800_000  # 2000-01-01 UTC, Postgres' own epoch, in Unix ms

_STAGE_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS postbacks_stage (LIKE postbacks) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS calls_stage (LIKE calls) ON COMMIT DELETE ROWS;"
)
_POSTBACK_LIST = ", ".join(POSTBACK_COLUMNS)
_INSERT_POSTBACKS = (
    f"INSERT INTO postbacks ({_POSTBACK_LIST}) SELECT {_POSTBACK_LIST} FROM postbacks_stage"
    " ON CONFLICT DO NOTHING"
)
# An amended row wins over the row of the same entry, whichever came first.
_AMEND_POSTBACKS = (
    f"INSERT INTO postbacks ({_POSTBACK_LIST})"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(POSTBACK_COLUMNS) + 1))})"
    " ON CONFLICT (received_at, id) DO UPDATE SET"
    " status = EXCLUDED.status, error = EXCLUDED.error, http_status = EXCLUDED.http_status"
)
_CALL_LIST = ", ".join(CALL_COLUMNS)
_STARTED = CALL_COLUMNS.index("started_at")
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

# Raised by asyncpg for a value it cannot encode (client side: ValueError, TypeError,
# OverflowError) or that Postgres refuses (SQLSTATE class 22, asyncpg.DataError).
_DATA_ERRORS = (ValueError, TypeError, OverflowError, asyncpg.DataError)


class BadData(Exception):
    """A batch's rows were refused for their values (not because a server is down)."""


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


class RowWriter:
    """Writes a batch's rows, the postback log's day partitions made first, and the rows
    of callers erased meanwhile redacted (see erasure.py)."""

    def __init__(self, pool: asyncpg.Pool, partitions: Partitions, redactor: Redactor):
        self.pool = pool
        self.partitions = partitions
        self.redactor = redactor

    async def commit(
        self,
        postbacks: list[Row],
        calls: list[Row],
        amended: list[Row] | None = None,
        *,
        fresh: bool = False,
        outbox: list[Row] | None = None,
    ) -> list[str]:
        """Write the rows in one transaction; the ids of the webhook deliveries (`outbox`
        rows) inserted now. BadData if some value was refused."""
        amended = amended or []
        if not postbacks and not calls and not amended:
            return []
        times = [row[0] for row in postbacks + amended] + [row[_STARTED] for row in calls]
        async with self.pool.acquire() as conn:
            try:
                await self.partitions.ensure(conn, (row[0] for row in postbacks + amended))
                for direct in (True, False) if fresh else (False,):
                    try:
                        async with conn.transaction():
                            erased = await self.redactor.hold(conn, times)
                            rows = await self.redactor.redact(conn, erased, postbacks, calls)
                            fixed, _ = await self.redactor.redact(conn, erased, amended, [])
                            await self._insert(conn, *rows, fixed, direct=direct)
                            kept = await self.redactor.kept_deliveries(
                                conn, erased, outbox or [], OUTBOX_ERASE_COLUMNS
                            )
                            if not kept:
                                return []
                            made = await conn.fetch(INSERT_OUTBOX, *columns(kept))
                        return [row[0] for row in made]
                    except asyncpg.UniqueViolationError:
                        if not direct:
                            raise
                        log.info("%d rows came again: adding the missing ones", len(postbacks))
            except _DATA_ERRORS as exc:
                raise BadData(f"{type(exc).__name__}: {exc}") from exc
        return []  # not reached: the careful way returns or raises

    @staticmethod
    async def _insert(
        conn: Conn, postbacks: list[Row], calls: list[Row], amended: list[Row], *, direct: bool
    ) -> None:
        """Inside the caller's transaction. `direct`: COPY the postbacks into their
        table, which fails on a row that is there already; else through the temp table,
        adding only the missing rows."""
        if postbacks and direct:
            await conn.copy_records_to_table(
                "postbacks", records=postbacks, columns=POSTBACK_COLUMNS
            )
        elif postbacks:
            await conn.copy_records_to_table(
                "postbacks_stage", records=postbacks, columns=POSTBACK_COLUMNS
            )
            await conn.execute(_INSERT_POSTBACKS)
        if amended:  # rare (a failover's moments): one statement a row is fine
            await conn.executemany(_AMEND_POSTBACKS, amended)
        if calls:
            await conn.copy_records_to_table("calls_stage", records=calls, columns=CALL_COLUMNS)
            await conn.execute(_UPSERT_CALLS)
