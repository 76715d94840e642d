"""The postback log's day partitions in Postgres (postbacks_p20261129, ...; the SQL
functions are in migrations/). The workers' cron job makes them a few days ahead and
drops those past retention; a batch reaching a day that has none makes it on the way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

EPOCH_DATE = date(1970, 1, 1)
DAY_MS = 86_400_000  # 1 day in ms
PARTITION_DAYS_AHEAD = 3  # day partitions of the postback log kept ready beyond today

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


def utc_today() -> date:
    return datetime.now(UTC).date()


class Partitions:
    """The day partitions as one worker knows them: a day it has made (or found) once is
    not asked for again until `maintain` may have dropped it."""

    def __init__(self) -> None:
        self._days: set[int] = set()  # days (since the epoch) known to have a partition

    async def ensure(self, conn: Conn, received_ms: Iterable[int]) -> None:
        """Make the partitions of the days of these times (Unix ms) that have none."""
        new_days = {ms // DAY_MS for ms in received_ms} - self._days
        for day in sorted(new_days):
            await conn.fetchval(
                "SELECT postbacks_ensure_partition($1)", EPOCH_DATE + timedelta(days=day)
            )
            self._days.add(day)

    async def maintain(
        self, pool: asyncpg.Pool, retention_days: int, today: date
    ) -> tuple[int, int]:
        """Make the partitions from yesterday to PARTITION_DAYS_AHEAD days ahead, drop
        those past retention; (how many made, how many dropped)."""
        created = 0
        async with pool.acquire() as conn:
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
        return created, dropped
