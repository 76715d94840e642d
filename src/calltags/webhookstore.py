"""Webhooks and their deliveries in Postgres: the admin API's reads and writes, and each
attempt's outcome recorded (the workers', and a test's). Postgres errors become
StoreUnavailable at this boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from calltags.db import POSTGRES_ERRORS
from calltags.errors import StoreBoundary
from calltags.models import from_row
from calltags.records import Query, decode_cursor, encode_cursor
from calltags.webhooks import (
    Delivery,
    DeliveryFilters,
    DeliveryPage,
    NewWebhook,
    Webhook,
    WebhookCreate,
    WebhookUpdate,
    new_secret,
)

_WEBHOOK_COLUMNS = (
    "id, name, url, method, events, publisher_id, campaign, tag_filters, enabled,"
    " disabled_reason, failures_in_row, created_at, updated_at"
)
_DELIVERY_SELECT = (
    "SELECT id, webhook_id, event, call_uuid, method, url, state, attempts, last_status,"
    " last_error, latency_ms, occurred_at, created_at, updated_at, delivered_at,"
    " CASE WHEN state = 'pending' THEN next_attempt_at END AS next_attempt_at"
    " FROM webhook_deliveries"
)
# An attempt's outcome, recorded only if no other attempt was recorded meanwhile (a job
# run twice sends twice at worst, and counts once); with the webhook's count of failed
# deliveries in a row: started again by a delivery, one more for a delivery failed, at
# `$8` (above 0) disabling the webhook. One statement: one round trip an attempt.
_RECORD = (
    "WITH d AS (UPDATE webhook_deliveries SET attempts = attempts + 1, state = $3,"
    " last_status = $4, last_error = $5, latency_ms = $6, updated_at = now(),"
    " next_attempt_at = now() + make_interval(secs => $7),"
    " delivered_at = CASE WHEN $3 = 'delivered' THEN now() END"
    " WHERE id = $1::uuid AND state = 'pending' AND attempts = $2 RETURNING webhook_id),"
    " w AS (UPDATE webhooks SET"
    "  failures_in_row = CASE WHEN $3 = 'delivered' THEN 0 ELSE failures_in_row + 1 END,"
    "  enabled = enabled AND NOT ($3 = 'failed' AND $8 > 0 AND failures_in_row + 1 >= $8),"
    "  disabled_reason = CASE WHEN $3 = 'failed' AND enabled AND $8 > 0"
    "   AND failures_in_row + 1 >= $8"
    "   THEN format('disabled after %s failed deliveries in a row', failures_in_row + 1)"
    "   ELSE disabled_reason END"
    " FROM d WHERE webhooks.id = d.webhook_id"
    "  AND ($3 = 'failed' OR ($3 = 'delivered' AND failures_in_row <> 0)))"
    " SELECT webhook_id FROM d"
)
# The pending deliveries of these ids whose attempt is due, leased for `$2` s: until the
# lease ends (or the attempt is recorded) no other job sends them, and the workers'
# sweep leaves them alone. A job a little early (clocks) still takes its delivery.
_CLAIM = (
    "UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)"
    " FROM webhooks w WHERE d.id = ANY($1::uuid[]) AND d.state = 'pending'"
    " AND d.next_attempt_at <= now() + interval '1 second' AND w.id = d.webhook_id"
    " RETURNING d.id::text AS id, d.webhook_id, d.event, d.method, d.url, d.body, d.attempts,"
    " w.secret"
)


class WebhookNotFound(Exception):
    pass


@dataclass(frozen=True)
class Pending:
    """A pending delivery as an attempt sends it."""

    id: str
    webhook_id: int
    event: str
    method: str
    url: str
    body: bytes
    attempts: int
    secret: str


@dataclass(frozen=True)
class Attempt:
    """How an attempt went: a 2xx is delivered; `final` ends the delivery as failed."""

    status: int | None
    error: str | None
    latency_ms: int | None
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def webhook_model(row: asyncpg.Record, model: type[Webhook] = Webhook, **more: Any) -> Webhook:
    filters = row["tag_filters"]
    if isinstance(filters, str):  # the web side's pool reads jsonb as text
        filters = msgspec.json.decode(filters)
    return from_row(model, row, tag_filters=filters, **more)


def _delivery(row: asyncpg.Record) -> Delivery:
    return from_row(Delivery, row, id=str(row["id"]))


class WebhookStore(StoreBoundary):
    driver_errors = POSTGRES_ERRORS

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    # -- webhooks ----------------------------------------------------------------------------

    async def create(self, new: WebhookCreate) -> NewWebhook:
        secret = new_secret()
        row = await self.pool.fetchrow(
            "INSERT INTO webhooks (name, url, method, events, publisher_id, campaign,"
            " tag_filters, enabled, secret) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)"
            f" RETURNING {_WEBHOOK_COLUMNS}",
            new.name,
            new.url,
            new.method,
            list(new.events),
            new.publisher_id,
            new.campaign,
            msgspec.json.encode(new.tag_filters).decode(),
            new.enabled,
            secret,
        )
        assert row is not None
        created = webhook_model(row, NewWebhook, secret=secret)
        assert isinstance(created, NewWebhook)
        return created

    async def all(self) -> list[Webhook]:
        rows = await self.pool.fetch(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks ORDER BY id")
        return [webhook_model(row) for row in rows]

    async def get(self, webhook_id: int) -> Webhook:
        row = await self.pool.fetchrow(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1", webhook_id
        )
        if row is None:
            raise WebhookNotFound(webhook_id)
        return webhook_model(row)

    async def secret(self, webhook_id: int) -> str:
        found: str | None = await self.pool.fetchval(
            "SELECT secret FROM webhooks WHERE id = $1", webhook_id
        )
        if found is None:
            raise WebhookNotFound(webhook_id)
        return found

    async def update(self, webhook_id: int, update: WebhookUpdate) -> Webhook:
        changes = update.changes()
        if not changes:
            return await self.get(webhook_id)
        sets: list[str] = []
        args: list[Any] = [webhook_id]
        for name, value in changes.items():
            if name == "tag_filters":
                value = msgspec.json.encode(value).decode()
            args.append(value)
            cast = "::jsonb" if name == "tag_filters" else ""
            sets.append(f"{name} = ${len(args)}{cast}")
        if changes.get("enabled") is True:  # enabled again: counting starts again
            sets += ["failures_in_row = 0", "disabled_reason = NULL"]
        row = await self.pool.fetchrow(
            f"UPDATE webhooks SET {', '.join(sets)}, updated_at = now() WHERE id = $1"
            f" RETURNING {_WEBHOOK_COLUMNS}",
            *args,
        )
        if row is None:
            raise WebhookNotFound(webhook_id)
        return webhook_model(row)

    async def delete(self, webhook_id: int) -> Webhook:
        """Delete the webhook and its deliveries (pending ones are not sent)."""
        row = await self.pool.fetchrow(
            f"DELETE FROM webhooks WHERE id = $1 RETURNING {_WEBHOOK_COLUMNS}", webhook_id
        )
        if row is None:
            raise WebhookNotFound(webhook_id)
        return webhook_model(row)

    # -- deliveries --------------------------------------------------------------------------

    async def deliveries(
        self, filters: DeliveryFilters, webhook_id: int | None = None
    ) -> DeliveryPage:
        """A page of deliveries, newest first: of one webhook (WebhookNotFound if there is
        none), or of all (then usually of one call)."""
        if webhook_id is not None:
            await self.get(webhook_id)
        query = Query()
        if webhook_id is not None:
            query.add("webhook_id = {}", webhook_id)
        for column in ("call_uuid", "state", "event"):
            value = getattr(filters, column)
            if value is not None:
                query.add(f"{column} = {{}}", value)
        cursor = decode_cursor(filters.cursor)
        if cursor is not None:
            at, key = cursor
            query.add("(created_at, id) < ({}, {}::uuid)", at, key)
        rows = await self.pool.fetch(
            f"{_DELIVERY_SELECT}{query.where()} ORDER BY created_at DESC, id DESC"
            f" LIMIT {filters.limit + 1}",
            *query.args,
        )
        more = len(rows) > filters.limit
        rows = rows[: filters.limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], str(rows[-1]["id"])) if more else None
        return DeliveryPage(items=[_delivery(row) for row in rows], next_cursor=next_cursor)

    async def add_sent(
        self, delivery_id: str, webhook_id: int, event: str, url: str, method: str,
        body: bytes, attempt: Attempt,
    ) -> None:  # fmt: skip
        """Record a delivery sent once, not retried (a webhook.test)."""
        state = "delivered" if attempt.delivered else "failed"
        await self.pool.execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event, source, method, url, body,"
            " state, attempts, last_status, last_error, latency_ms, occurred_at, delivered_at)"
            " VALUES ($1::uuid, $2, $3, $1, $4, $5, $6, $7, 1, $8, $9, $10, now(),"
            " CASE WHEN $7 = 'delivered' THEN now() END)",
            delivery_id,
            webhook_id,
            event,
            method,
            url,
            body.decode(),
            state,
            attempt.status,
            attempt.error,
            attempt.latency_ms,
        )

    async def claim(self, delivery_ids: list[str], lease_seconds: float) -> list[Pending]:
        """Those of the deliveries still pending and due, leased to the caller."""
        rows = await self.pool.fetch(_CLAIM, delivery_ids, lease_seconds)
        return [Pending(**{**dict(row.items()), "body": row["body"].encode()}) for row in rows]

    async def record(
        self, delivery: Pending, attempt: Attempt, *, last: bool, retry_in: float,
        disable_after: int,
    ) -> str | None:  # fmt: skip
        """Record the attempt; the delivery's state now (None: another attempt of it was
        recorded first). `last`: no attempt is left after this one. A delivery that ends
        failed counts towards disabling its webhook, one delivered starts the count again."""
        if attempt.delivered:
            state = "delivered"
        elif last or attempt.final:
            state = "failed"
        else:
            state = "pending"
        found = await self.pool.fetchval(
            _RECORD,
            delivery.id,
            delivery.attempts,
            state,
            attempt.status,
            attempt.error,
            attempt.latency_ms,
            retry_in,
            disable_after,
        )
        return state if found is not None else None

    async def due(self, limit: int, overdue_seconds: float) -> list[tuple[str, int]]:
        """Pending deliveries whose attempt is overdue by `overdue_seconds`: (id, attempts
        so far), the most overdue first."""
        rows = await self.pool.fetch(
            "SELECT id::text AS id, attempts FROM webhook_deliveries WHERE state = 'pending'"
            " AND next_attempt_at < now() - make_interval(secs => $1)"
            " ORDER BY next_attempt_at LIMIT $2",
            overdue_seconds,
            limit,
        )
        return [(row["id"], row["attempts"]) for row in rows]

    async def prune(self, days: int) -> int:
        """Delete the deliveries done (delivered or failed) more than `days` days ago;
        how many."""
        status: str = await self.pool.execute(
            "DELETE FROM webhook_deliveries WHERE state <> 'pending'"
            " AND updated_at < now() - make_interval(days => $1)",
            days,
        )
        return int(status.rpartition(" ")[2])

    async def stats(self, buckets: tuple[float, ...]) -> tuple[dict[str, int], list[int], float]:
        """Deliveries by state; of the delivered (tests aside), how many took at most each
        bucket's seconds from the event to the delivery, then all of them, and their sum
        of seconds."""
        counts = {
            row["state"]: row["n"]
            for row in await self.pool.fetch(
                "SELECT state, count(*) AS n FROM webhook_deliveries GROUP BY state"
            )
        }
        within = ", ".join(
            f"count(*) FILTER (WHERE seconds <= {float(bound)!r})" for bound in buckets
        )
        row = await self.pool.fetchrow(
            f"SELECT {within}, count(*), coalesce(sum(seconds), 0)::float8 FROM"
            " (SELECT extract(epoch FROM delivered_at - occurred_at) AS seconds"
            "  FROM webhook_deliveries WHERE state = 'delivered' AND event <> 'webhook.test') d"
        )
        assert row is not None
        values = list(row.values())
        return counts, [int(v) for v in values[:-1]], float(values[-1])
