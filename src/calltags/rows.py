"""Rows for Postgres from the entries of the log streams: a postback log entry gives a
`postbacks` row, and a `calls` row for the call it carries; a call snapshot gives a
`calls` row; an entry that cannot be read gives an `undecodable_entry` row, so that it
is kept, never lost. An entry marked with the request's answer (field a: the replicas did
not confirm the write in time) gives an amended row, which replaces the row of the same
request whichever arrives first.

Rows are built with as little work per entry as the log allows (this is the worker's
hot loop): an entry's JSON is parsed once and its values taken as they are, times as
Unix ms and JSON as Python values, which the sink pool's own codecs encode (see
writer.py). An entry that does not fit makes the COPY fail; the batch is then rebuilt
checking each entry (`checked`).
"""

from __future__ import annotations

import logging
import re
import uuid
from operator import itemgetter
from typing import Any, TypeAlias

import msgspec
import orjson

from calltags.errors import ERRORS
from calltags.log import ENTRY_FIELD, MAX_TAG_VALUE, stream_id_ms
from calltags.models import tag_sources
from calltags.store import (
    ANSWER_FIELD,
    CALL_FIELD,
    OUTCOME_FIELD,
    POSTBACK_OUTCOMES,
    SNAPSHOT_FIELD,
    call_from_doc,
)
from calltags.streams import Entry

log = logging.getLogger("calltags.sink")

MAX_MS = 253_402_300_799_999  # the end of year 9999 UTC, in Unix ms

Row: TypeAlias = tuple[Any, ...]

# Named as the keys of a log entry (log.make_entry), so a row is the entry's values.
POSTBACK_COLUMNS = (
    "received_at", "id", "method", "publisher_id", "key_id", "key_prefix", "caller_raw",
    "caller_number", "call_uuid", "tags", "status", "error", "http_status", "remote_addr",
    "user_agent", "latency_us", "message", "replayed",
)  # fmt: skip
_POSTBACK_VALUES = itemgetter(*POSTBACK_COLUMNS)
CALL_COLUMNS = (
    "call_uuid", "caller_number", "publisher_id", "campaign", "state", "started_at",
    "ended_at", "tags", "tag_sources", "version", "updated_at",
)  # fmt: skip

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

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
        _text(entry.get("message")),
        entry.get("replayed") is True,
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
        ERRORS["undecodable_entry"].message,
        False,
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
        msgspec.to_builtins(tag_sources(call)),
        _int(call.version, 32),
        _ms(max(changed)),
    )


def log_rows(
    stream: str, batch: list[Entry], *, checked: bool = False
) -> tuple[list[Row], list[Row], list[Row]]:
    """(postbacks rows, calls rows, amended postbacks rows) of a batch of a postback log
    stream.

    Unless `checked`, a log entry's values go into its row as they are (the hot
    loop); `checked` looks at every value, for a batch whose COPY was refused.
    """
    postbacks: list[Row] = []
    calls: list[Row] = []
    amended: list[Row] = []
    unknown: list[bytes] = []
    for entry_id, fields in batch:
        raw = fields.get(ENTRY_FIELD, b"") if fields else b""
        rows = postbacks
        try:
            doc = _loads(raw) if checked else orjson.loads(raw)  # see _loads
            snapshot = None
            if fields is not None and len(fields) > 1:  # an outcome, a call, an answer
                code = fields.get(OUTCOME_FIELD)
                if code is not None:  # the write script's outcome decides the status
                    outcome = _outcome(code)
                    if outcome is None:
                        unknown.append(code)
                    else:
                        doc["status"], doc["error"], doc["http_status"] = outcome
                        error = outcome[1]  # the script's refusal: the table's message
                        doc["message"] = ERRORS[error].message if error else None
                if (found := fields.get(CALL_FIELD)) is not None:
                    snapshot = _snapshot(found, stream, entry_id, checked)
                    if snapshot is not None and doc.get("call_uuid") is None:
                        doc["call_uuid"] = snapshot.get("u")  # the call the tags went to
                if (answer := fields.get(ANSWER_FIELD)) is not None:  # what the client got
                    doc["error"] = answer.decode()
                    doc["http_status"] = ERRORS[doc["error"]].status
                    rows = amended
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
        rows.append(row)
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
    return postbacks, calls, amended


def snapshot_rows(stream: str, batch: list[Entry]) -> list[Row]:
    """The calls rows of a batch of a call log stream."""
    calls: list[Row] = []
    for entry_id, fields in batch:
        try:
            calls.append(call_row(_loads(fields.get(SNAPSHOT_FIELD) if fields else None)))
        except _ENTRY_ERRORS:
            log.error("dropped unreadable call snapshot in %s %r", stream, entry_id)
    return calls
