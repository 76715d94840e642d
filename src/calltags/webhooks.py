"""Outbound webhooks: their definitions (the admin API's models), which call events a
webhook fires for (its filters), and what a delivery sends: the JSON body, the URL
with its tokens replaced, and the signed headers.

Neither side's framework is imported here: the workers decide and send deliveries
(`outbox`, `delivery`), the web side manages webhooks and sends their tests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from calltags import __version__, store
from calltags.models import (
    DEFAULT_LIMIT,
    Body,
    CallUuid,
    Campaign,
    Cursor,
    Id,
    Limit,
    Name,
    TagSource,
    Time,
    Update,
    call_model,
    tag_sources,
)
from calltags.times import iso_ms

CALL_CONNECTED = "call.connected"
TAGS_APPLIED = "call.tags_applied"
CALL_ENDED = "call.ended"
TAGS_STORED = "tags.stored"
EVENTS = (CALL_CONNECTED, TAGS_APPLIED, CALL_ENDED, TAGS_STORED)
TEST_EVENT = "webhook.test"  # sent by POST /admin/webhooks/{id}/test, to every webhook
STATES = ("pending", "delivered", "failed")
SECRET_PREFIX = "whsec_"
MAX_URL = 2048  # characters of a webhook's URL template
MAX_TAG_FILTERS = 20
MAX_ONE_OF = 100  # values of a one_of filter
MAX_ANSWER_BYTES = 65_536  # of a receiver's answer, read and no more
MAX_ERROR_TEXT = 300  # characters of a receiver's answer kept as the delivery's error
MAX_RETRY_DELAY = 21_600.0  # 6 h: the longest wait between two attempts, s
USER_AGENT = f"calltags/{__version__}"

Event = Literal["call.connected", "call.tags_applied", "call.ended", "tags.stored"]
TagName = Annotated[str, Meta(min_length=1, max_length=256)]
TagValue = Annotated[str, Meta(max_length=1024)]
WebhookUrl = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_URL,
        description="http(s) URL; tokens such as [call_uuid] or [tag:zip|none] are replaced",
    ),
]
Events = Annotated[list[Event], Meta(min_length=1, max_length=len(EVENTS))]


class TagFilter(Body):
    """The call's tags after the event (a tags.stored event's own tags) must: hold the
    tag (`exists`), hold it with `value` (`equals`), or with one of `value` (`one_of`)."""

    tag: TagName
    op: Literal["exists", "equals", "one_of"]
    value: TagValue | Annotated[list[TagValue], Meta(max_length=MAX_ONE_OF)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.op == "exists" and self.value is not None:
            raise ValueError("tag_filters: op exists takes no value")
        if self.op == "equals" and not isinstance(self.value, str):
            raise ValueError("tag_filters: op equals needs a text value")
        if self.op == "one_of" and not (isinstance(self.value, list) and self.value):
            raise ValueError("tag_filters: op one_of needs a list of values")

    def matches(self, tags: Mapping[str, str]) -> bool:
        found = tags.get(self.tag)
        if found is None:
            return False
        if self.op == "equals":
            return found == self.value
        if self.op == "one_of":
            assert isinstance(self.value, list)
            return found in self.value
        return True


TagFilters = Annotated[list[TagFilter], Meta(max_length=MAX_TAG_FILTERS)]


def tag_filter(text: str) -> dict[str, Any]:
    """A tag filter as the CLI and the console write it: NAME (exists), NAME=VALUE
    (equals) or NAME=A|B|C (one_of)."""
    name, sep, value = text.partition("=")
    if not sep:
        return {"tag": name, "op": "exists"}
    if "|" in value:
        return {"tag": name, "op": "one_of", "value": value.split("|")}
    return {"tag": name, "op": "equals", "value": value}


def _check_url(url: str | UnsetType) -> None:
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")


def _check_events(events: list[Event] | UnsetType) -> None:
    if isinstance(events, list) and len(set(events)) != len(events):
        raise ValueError("events must not repeat an event")


class WebhookCreate(Body):
    name: Name
    url: WebhookUrl
    events: Events
    method: Literal["POST", "GET"] = "POST"
    publisher_id: Id | None = None
    campaign: Campaign | None = None
    tag_filters: TagFilters = msgspec.field(default_factory=list)
    enabled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = self.name.strip()
        if not self.name:
            raise ValueError("name must not be blank")
        _check_url(self.url)
        _check_events(self.events)


class WebhookUpdate(Update):
    """A webhook's fields a PATCH changes; those left out stay as they are. Enabling a
    webhook starts its count of failed deliveries in a row again."""

    name: Name | UnsetType = UNSET
    url: WebhookUrl | UnsetType = UNSET
    events: Events | UnsetType = UNSET
    method: Literal["POST", "GET"] | UnsetType = UNSET
    publisher_id: Id | UnsetType | None = UNSET
    campaign: Campaign | UnsetType | None = UNSET
    tag_filters: TagFilters | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_url(self.url)
        _check_events(self.events)


class Webhook(Struct, kw_only=True):
    """A webhook as listed: never its secret."""

    id: int
    name: Name
    url: WebhookUrl
    method: Literal["POST", "GET"]
    events: list[Event]
    publisher_id: int | None
    campaign: str | None
    tag_filters: list[TagFilter]
    enabled: bool
    disabled_reason: (
        Annotated[str, Meta(description="why the webhook was disabled on its own")] | None
    )
    failures_in_row: Annotated[int, Meta(description="failed deliveries since one delivered")]
    created_at: Time
    updated_at: Time


class NewWebhook(Webhook, kw_only=True):
    """A webhook just created, with its signing secret: shown this once."""

    secret: Annotated[str, Meta(description="HMAC-SHA256 key of X-Calltags-Signature")]


class Webhooks(Struct, kw_only=True):
    items: list[Webhook]


class DeliveryFilters(Body):
    call_uuid: CallUuid | None = None
    state: Literal["pending", "delivered", "failed"] | None = None
    event: Event | Literal["webhook.test"] | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


class Delivery(Struct, kw_only=True):
    """One event sent to one webhook: its attempts so far, and how the last one went."""

    id: Annotated[str, Meta(description="X-Calltags-Delivery, the same on every attempt")]
    webhook_id: int
    event: str
    call_uuid: str | None
    method: str
    url: Annotated[str, Meta(description="as sent, its tokens replaced")]
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: Annotated[int, Meta(description="the receiver's last HTTP status")] | None
    last_error: Annotated[str, Meta(description="why the last attempt failed")] | None
    latency_ms: Annotated[int, Meta(description="the last attempt's round trip, ms")] | None
    occurred_at: Time
    created_at: Time
    updated_at: Time
    delivered_at: Time | None
    next_attempt_at: Annotated[Time, Meta(description="while pending")] | None


class DeliveryPage(Struct, kw_only=True):
    items: list[Delivery]
    next_cursor: str | None


class TestResult(Struct, kw_only=True):
    """What the receiver answered the webhook.test event (sent once, not retried)."""

    delivery_id: str
    delivered: bool
    status: Annotated[int, Meta(description="the receiver's HTTP status")] | None
    error: str | None
    latency_ms: int | None


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """X-Calltags-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def headers(
    secret: str, event: str, delivery_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of an attempt (a JSON content type when there is a body)."""
    found = {
        "User-Agent": USER_AGENT,
        "X-Calltags-Event": event,
        "X-Calltags-Delivery": delivery_id,
        "X-Calltags-Timestamp": str(timestamp),
        "X-Calltags-Signature": sign(secret, timestamp, body),
    }
    if body:
        found["Content-Type"] = "application/json"
    return found


def retry_delay(base_seconds: float, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: the base, doubled
    after each, at most MAX_RETRY_DELAY."""
    return float(min(base_seconds * 2.0 ** min(attempts - 1, 60), MAX_RETRY_DELAY))


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallEvent:
    """A call event as the workers saw it in a batch: `source` names what made it (the
    postback entry, or the call), so that the same event seen again makes no delivery."""

    name: str
    source: str
    occurred_ms: int
    call: store.Call | None
    caller_number: str | None
    tags: dict[str, str]  # the event's own tags
    sources: dict[str, TagSource]
    # The posting publisher (tags.stored and call.tags_applied), beside the call's own.
    poster_id: int | None = None

    @property
    def call_tags(self) -> Mapping[str, str]:
        """The tags the filters look at: the call's after the event, else the event's."""
        return self.call.tags if self.call is not None else self.tags

    @property
    def publisher_id(self) -> str | None:
        if self.call is not None and self.call.publisher_id is not None:
            return self.call.publisher_id
        return str(self.poster_id) if self.poster_id is not None else None


def connect_or_end(call: store.Call) -> CallEvent:
    """call.connected (the tags the connect claimed) or call.ended (the final tags) of a
    call snapshot the routing API recorded."""
    if call.state == "completed":
        name, at = CALL_ENDED, call.ended_ms or call.started_ms
    else:
        name, at = CALL_CONNECTED, call.started_ms
    return CallEvent(
        name, call.call_uuid, at, call, call.caller_number, call.tags, tag_sources(call)
    )


def postback_event(status: str, entry: dict[str, Any], call: store.Call | None) -> CallEvent | None:
    """call.tags_applied or tags.stored of an accepted postback's log entry; None for
    other statuses."""
    tags: dict[str, str] = entry.get("tags") or {}
    received: int = entry["received_at"]
    poster = entry.get("publisher_id")
    if status == store.STATUS_STORED:
        set_at = iso_ms(received)
        key_id = entry.get("key_id") or 0
        sources = {
            name: TagSource(publisher_id=poster or 0, key_id=key_id, set_at=set_at) for name in tags
        }
        return CallEvent(
            TAGS_STORED, entry["id"], received, None, entry.get("caller_number"), tags,
            sources, poster,
        )  # fmt: skip
    if status in (store.STATUS_LIVE, store.STATUS_COMPLETED) and call is not None:
        known = tag_sources(call)
        sources = {name: known[name] for name in tags if name in known}
        return CallEvent(
            TAGS_APPLIED, entry["id"], received, call, call.caller_number, tags, sources, poster
        )
    return None


@dataclass(frozen=True)
class Hook:
    """What the workers need of an enabled webhook to decide and make its deliveries."""

    id: int
    url: str
    method: str
    events: frozenset[str]
    publisher_id: int | None = None
    campaign: str | None = None
    tag_filters: tuple[TagFilter, ...] = field(default_factory=tuple)

    def fires_for(self, event: CallEvent) -> bool:
        if event.name not in self.events:
            return False
        if self.publisher_id is not None:
            wanted = str(self.publisher_id)
            call_publisher = event.call.publisher_id if event.call is not None else None
            poster = str(event.poster_id) if event.poster_id is not None else None
            if wanted not in (call_publisher, poster):
                return False
        if self.campaign is not None and (
            event.call is None or event.call.campaign != self.campaign
        ):
            return False
        tags = event.call_tags
        return all(f.matches(tags) for f in self.tag_filters)


def hook_from_row(row: Any) -> Hook:
    """A Hook from a `webhooks` row (asyncpg's Record, or a mapping)."""
    filters = row["tag_filters"]
    if isinstance(filters, str):
        filters = msgspec.json.decode(filters)
    return Hook(
        id=row["id"],
        url=row["url"],
        method=row["method"],
        events=frozenset(row["events"]),
        publisher_id=row["publisher_id"],
        campaign=row["campaign"],
        tag_filters=tuple(msgspec.convert(filters, list[TagFilter])),
    )


def body(event: CallEvent, delivery_id: str) -> bytes:
    """The JSON a POST delivery sends."""
    doc: dict[str, Any] = {
        "event": event.name,
        "delivery_id": delivery_id,
        "occurred_at": iso_ms(event.occurred_ms),
    }
    if event.call is not None:
        doc["call"] = call_model(event.call)
    doc["caller_number"] = event.caller_number
    doc["tags"] = event.tags
    doc["tag_sources"] = event.sources
    return msgspec.json.encode(doc)


def test_body(delivery_id: str, now_ms: int) -> bytes:
    doc = {"event": TEST_EVENT, "delivery_id": delivery_id, "occurred_at": iso_ms(now_ms)}
    return msgspec.json.encode({**doc, "caller_number": None, "tags": {}, "tag_sources": {}})


_TOKEN = re.compile(
    r"\[(event|delivery_id|call_uuid|caller_number|campaign|publisher_id|tag:([^\]|]+)(?:\|([^\]]*))?)\]"
)


def render_url(template: str, values: Mapping[str, str | None], tags: Mapping[str, str]) -> str:
    """The URL template with its tokens replaced, URL-encoded: [event], [delivery_id],
    [call_uuid], [caller_number], [campaign], [publisher_id] from `values` (empty when
    unknown), [tag:NAME] from `tags`, [tag:NAME|fallback] the fallback when absent.
    Anything else in brackets stays as it is."""

    def replace(match: re.Match[str]) -> str:
        name, tag, fallback = match.group(1), match.group(2), match.group(3)
        if tag is not None:
            found = tags.get(tag)
            value = found if found is not None else (fallback or "")
        else:
            value = values.get(name) or ""
        return quote(value, safe="")

    return _TOKEN.sub(replace, template)


def event_url(template: str, event: CallEvent, delivery_id: str) -> str:
    call = event.call
    values = {
        "event": event.name,
        "delivery_id": delivery_id,
        "call_uuid": call.call_uuid if call is not None else None,
        "caller_number": event.caller_number,
        "campaign": call.campaign if call is not None else None,
        "publisher_id": event.publisher_id,
    }
    return render_url(template, values, {**event.call_tags, **event.tags})
