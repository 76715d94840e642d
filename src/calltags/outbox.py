"""The webhooks' outbox, the workers' side: which deliveries a batch of the log streams
makes, decided as the batch is flushed and inserted in the transaction that commits its
rows (writer.py), so that a worker killed at any moment neither loses nor invents one.

A postback log entry accepted with "call in progress, tags applied" or "completed call
found, tags applied" makes call.tags_applied, one with "call not found, tags stored"
makes tags.stored; a call snapshot of the call log makes call.connected (in progress:
the snapshot a connect records) or call.ended (completed). Refused entries (no status),
replays (`"replayed": true`, which wrote nothing) and entries an erase redacted in Redis
make none; nor does an event of a caller erased after it (writer.py). Each delivery is
unique by webhook, event and source (the entry's id, or the call), so a batch delivered
twice inserts nothing twice. The enabled webhooks are read from Postgres at most every
CACHE_SECONDS; the insert itself skips a webhook disabled or deleted meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
import orjson

from calltags import webhooks
from calltags.ids import random_uuid
from calltags.rows import Row
from calltags.store import (
    CALL_FIELD,
    ENTRY_FIELD,
    OUTCOME_FIELD,
    POSTBACK_OUTCOMES,
    SNAPSHOT_FIELD,
    Call,
    call_from_doc,
)
from calltags.streams import Entry
from calltags.webhooks import CallEvent, Hook, hook_from_row

log = logging.getLogger("calltags.webhooks")

CACHE_SECONDS = 2.0  # how stale the workers' list of enabled webhooks may be, s

OUTBOX_COLUMNS = (
    "id", "webhook_id", "event", "source", "call_uuid", "caller_number", "method", "url", "body",
    "occurred_ms",
)  # fmt: skip
# Where an outbox row holds its caller and its event's time, for the erasure redactor.
OUTBOX_ERASE_COLUMNS = (OUTBOX_COLUMNS.index("caller_number"), OUTBOX_COLUMNS.index("occurred_ms"))
INSERT_OUTBOX = (
    "INSERT INTO webhook_deliveries (id, webhook_id, event, source, call_uuid, caller_number,"
    " method, url, body, occurred_at)"
    " SELECT o.id::uuid, o.webhook_id, o.event, o.source, o.call_uuid, o.caller_number,"
    " o.method, o.url, o.body, to_timestamp(o.occurred_ms / 1000.0)"
    " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],"
    " $7::text[], $8::text[], $9::text[], $10::bigint[])"
    f" AS o({', '.join(OUTBOX_COLUMNS)})"
    " JOIN webhooks w ON w.id = o.webhook_id AND w.enabled"
    " ON CONFLICT (webhook_id, event, source) DO NOTHING RETURNING id::text"
)

# Tells the senders of the deliveries just committed, by id.
Notify = Callable[[list[str]], Awaitable[None]]

_ENTRY_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


def _call(raw: bytes | None) -> Call | None:
    if raw is None:
        return None
    try:
        return call_from_doc(orjson.loads(raw))
    except _ENTRY_ERRORS:
        return None


def postback_events(batch: list[Entry]) -> list[CallEvent]:
    """The events of a batch of postback log entries (unreadable entries make none)."""
    events: list[CallEvent] = []
    for _, fields in batch:
        if not fields:
            continue
        try:
            doc = orjson.loads(fields.get(ENTRY_FIELD, b""))
            # A replay wrote nothing; an entry without its caller was redacted by an erase.
            if not isinstance(doc, dict) or doc.get("replayed") or not doc.get("caller_number"):
                continue
            status = doc.get("status")
            code = fields.get(OUTCOME_FIELD)
            if code is not None:  # the write script's outcome decides, as for the row
                status = POSTBACK_OUTCOMES.get(int(code), (status,))[0]
            if status is None:
                continue
            raw = fields.get(CALL_FIELD)
            call = _call(raw) if raw is not None else None
            if call is None and isinstance(doc.get("call"), dict):
                call = call_from_doc(doc["call"])
            event = webhooks.postback_event(status, doc, call)
        except _ENTRY_ERRORS:
            continue
        if event is not None:
            events.append(event)
    return events


def snapshot_events(batch: list[Entry]) -> list[CallEvent]:
    """call.connected and call.ended of a batch of call snapshots."""
    events: list[CallEvent] = []
    for _, fields in batch:
        call = _call(fields.get(SNAPSHOT_FIELD) if fields else None)
        if call is not None and call.caller_number:  # none: redacted by an erase
            events.append(webhooks.connect_or_end(call))
    return events


def delivery_rows(hooks: list[Hook], events: list[CallEvent]) -> list[Row]:
    """An outbox row (OUTBOX_COLUMNS) for each webhook firing for each event."""
    rows: list[Row] = []
    for event in events:
        for hook in hooks:
            if not hook.fires_for(event):
                continue
            delivery_id = random_uuid()
            body = webhooks.body(event, delivery_id) if hook.method == "POST" else b""
            rows.append(
                (
                    delivery_id,
                    hook.id,
                    event.name,
                    event.source,
                    event.call.call_uuid if event.call is not None else None,
                    event.caller_number,
                    hook.method,
                    webhooks.event_url(hook.url, event, delivery_id),
                    body.decode(),
                    event.occurred_ms,
                )
            )
    return rows


class Outbox:
    """Plans a batch's deliveries (for the sink), and tells the senders of the new ones."""

    def __init__(self, pool: asyncpg.Pool, notify: Notify | None = None):
        self.pool = pool
        self.notify = notify
        self._hooks: list[Hook] = []
        self._loaded_at = -CACHE_SECONDS

    async def hooks(self) -> list[Hook]:
        """The enabled webhooks, read again once CACHE_SECONDS old."""
        now = time.monotonic()
        if now - self._loaded_at >= CACHE_SECONDS:
            rows = await self.pool.fetch(
                "SELECT id, url, method, events, publisher_id, campaign, tag_filters"
                " FROM webhooks WHERE enabled ORDER BY id"
            )
            self._hooks = [hook_from_row(row) for row in rows]
            self._loaded_at = now
        return self._hooks

    async def plan(self, batch: list[Entry], *, postbacks: bool) -> list[Row]:
        """The outbox rows of a batch of a postback log stream or a call log stream."""
        hooks = await self.hooks()
        if not hooks:
            return []
        events = postback_events(batch) if postbacks else snapshot_events(batch)
        return delivery_rows(hooks, events)

    async def committed(self, delivery_ids: list[str]) -> None:
        """After the commit: the senders take the new deliveries (if they are not told,
        the workers' sweep finds them)."""
        if delivery_ids and self.notify is not None:
            try:
                await self.notify(delivery_ids)
            except Exception as exc:  # Redis down: the sweep schedules them later
                log.warning("%d deliveries wait for the sweep: %s", len(delivery_ids), exc)


def columns(rows: list[Row]) -> list[list[object]]:
    """The outbox rows as one list per column, the arguments of INSERT_OUTBOX."""
    if not rows:
        return [[] for _ in OUTBOX_COLUMNS]
    return [list(values) for values in zip(*rows, strict=True)]
