"""The typed bodies of the routing and admin APIs: requests, with each limit and default
written once, and the answers. Validation, the CLI and the OpenAPI document all read
these Structs (`msgspec`, beside orjson: decoding and checking a body is one C call).
"""

from __future__ import annotations

import ipaddress
import re
import typing
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from calltags import store
from calltags.errors import LOGGED_CODES, ApiError
from calltags.patterns import compile_pattern
from calltags.phone import MAX_RAW_LENGTH
from calltags.store import STATUS_COMPLETED, STATUS_LIVE, STATUS_STORED
from calltags.times import iso, iso_ms

MAX_KEY_SECONDS = 2_592_000  # 30 days: the longest cut-off and storage duration of a key
DEFAULT_CUTOFF_SECONDS = 3600  # 1 h
DEFAULT_STORAGE_SECONDS = 86_400  # 1 day
DEFAULT_GRACE_SECONDS = 86_400  # 1 day a rotated-out secret keeps working
MAX_CIDRS = 100
MAX_RATE = 1_000_000.0  # postbacks a second: anything above is a typo
MAX_BURST = 10_000_000
MAX_LIMIT = 1000  # entries of a listing page
DEFAULT_LIMIT = 100
MAX_ID = 2**63 - 1  # Postgres bigint
MAX_TEST_TAGS = 131_072  # characters of a key test's tags: 100 tags of 1024 bytes fit
KEY_TYPES = ("call_data_writing",)
CALL_STATES = ("in_progress", "completed")
POSTBACK_STATUSES = (STATUS_STORED, STATUS_LIVE, STATUS_COMPLETED)
# A listing's `status` filter may also be one of these.
STATUS_GROUPS = ("accepted", "rejected")
STATUS_FILTERS = (*STATUS_GROUPS, *POSTBACK_STATUSES, *LOGGED_CODES)

Name = Annotated[str, Meta(min_length=1, max_length=200, description="1-200 characters")]
KeyType = Literal["call_data_writing"]
CutoffSeconds = Annotated[
    int,
    Meta(
        ge=0,
        le=MAX_KEY_SECONDS,
        description="how long after a call ends the key's postbacks still apply to it, s",
    ),
]
StorageSeconds = Annotated[
    int,
    Meta(ge=60, le=MAX_KEY_SECONDS, description="how long the key's pending tags wait, s"),
]
GraceSeconds = Annotated[
    int, Meta(ge=0, le=MAX_KEY_SECONDS, description="how long the old secret keeps working, s")
]
Cidrs = Annotated[
    list[str],
    Meta(
        max_length=MAX_CIDRS,
        description="networks allowed to post (empty: any), e.g. 203.0.113.0/24",
    ),
]
RatePerSecond = Annotated[
    float, Meta(gt=0, le=MAX_RATE, description="postbacks a second; null: CALLTAGS_RATE_LIMIT")
]
RateBurst = Annotated[int, Meta(ge=1, le=MAX_BURST, description="bucket size of the rate limit")]
CALL_UUID = r"[A-Za-z0-9_.:\-]{1,128}"
CallUuid = Annotated[
    str, Meta(pattern=f"^{CALL_UUID}$", description="1-128 of A-Z a-z 0-9 _ . : -")
]
# What routing may tag a call with at connect (free text).
PublisherRef = Annotated[str, Meta(max_length=64, description="as routing names publishers")]
Campaign = Annotated[str, Meta(max_length=200)]
AnyNumber = Annotated[str, Meta(max_length=MAX_RAW_LENGTH, description="any format")]
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
# A listing's page: its size and where it starts (`next_cursor` of the page before).
Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str, Meta(description="next_cursor of the previous page")]
Id = Annotated[int, Meta(ge=1, le=MAX_ID)]
IDEMPOTENCY_KEY = r"[\x20-\x7e]{1,255}"  # 1-255 printable ASCII characters
IdempotencyKey = Annotated[
    str,
    Meta(
        pattern=f"^{IDEMPOTENCY_KEY}$",
        description="1-255 printable characters: a repeat within CALLTAGS_IDEMPOTENCY_SECONDS"
        " gets the first answer again",
    ),
]
MAX_BULK_ITEMS = 1000  # postbacks of one bulk post
MAX_BULK_BODY_BYTES = 8 * 1024 * 1024  # 8 MiB of JSON or CSV
TAG_SCHEMA_NAME = r"[A-Za-z0-9_.\-]{1,64}"
SchemaName = Annotated[
    str,
    Meta(
        pattern=f"^{TAG_SCHEMA_NAME}$", description="a tag schema's name: 1-64 of A-Z a-z 0-9 _ . -"
    ),
]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body or query: unknown fields are refused, and no text may hold NUL
    (Postgres text cannot)."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{name} must not contain NUL")


def _stripped(value: str | UnsetType, field: str) -> str | UnsetType:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError(f"{field} must not be blank")
    return value


def _check_cidrs(cidrs: list[str] | UnsetType) -> None:
    if isinstance(cidrs, list):
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"allowed_cidrs: {exc}") from exc


# -- admin: publishers and keys ---------------------------------------------------------


class PublisherCreate(Body):
    name: Name

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = str(_stripped(self.name, "name"))


class KeyCreate(Body):
    name: Name
    type: KeyType = "call_data_writing"
    end_call_cutoff_seconds: CutoffSeconds = DEFAULT_CUTOFF_SECONDS
    storage_duration_seconds: StorageSeconds = DEFAULT_STORAGE_SECONDS
    require_signature: bool = False
    allowed_cidrs: Cidrs = msgspec.field(default_factory=list)
    rate_limit_per_second: RatePerSecond | None = None
    rate_limit_burst: RateBurst | None = None
    tag_schema: (
        Annotated[SchemaName, Meta(description="the tag schema its postbacks must fit")] | None
    ) = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = str(_stripped(self.name, "name"))
        _check_cidrs(self.allowed_cidrs)


class Update(Body):
    """A PATCH body: the fields given change, those left out (UNSET) stay as they are."""

    def changes(self) -> dict[str, Any]:
        """The columns given, by name."""
        return {
            name: getattr(self, name)
            for name in self.__struct_fields__
            if getattr(self, name) is not UNSET
        }


class PublisherUpdate(Update):
    """A publisher's fields a PATCH changes; those left out stay as they are."""

    name: Name | UnsetType = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = _stripped(self.name, "name")


class KeyUpdate(Update):
    """A key's fields a PATCH changes; those left out stay as they are."""

    name: Name | UnsetType = UNSET
    paused: bool | UnsetType = UNSET
    end_call_cutoff_seconds: CutoffSeconds | UnsetType = UNSET
    storage_duration_seconds: StorageSeconds | UnsetType = UNSET
    require_signature: bool | UnsetType = UNSET
    allowed_cidrs: Cidrs | UnsetType = UNSET
    rate_limit_per_second: RatePerSecond | UnsetType | None = UNSET
    rate_limit_burst: RateBurst | UnsetType | None = UNSET
    tag_schema: (
        Annotated[SchemaName, Meta(description="null: none, every tag accepted")] | UnsetType | None
    ) = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = _stripped(self.name, "name")
        _check_cidrs(self.allowed_cidrs)


class KeyRotate(Body):
    grace_seconds: GraceSeconds = DEFAULT_GRACE_SECONDS


class Publisher(Struct, kw_only=True):
    id: int
    name: Name
    created_at: Time


class Key(Struct, kw_only=True):
    """A postback key as listed: never its secret."""

    id: int
    publisher_id: int
    name: Name
    type: KeyType
    key_prefix: Annotated[str, Meta(description="the secret's first characters")]
    end_call_cutoff_seconds: CutoffSeconds
    storage_duration_seconds: StorageSeconds
    paused: bool
    revoked: bool
    revoked_at: Time | None
    created_at: Time
    last_used_at: Annotated[Time, Meta(description="to within a few seconds")] | None
    previous_key_valid_until: (
        Annotated[Time, Meta(description="until when the secret rotated out still works")] | None
    )
    require_signature: bool
    allowed_cidrs: Cidrs
    rate_limit_per_second: RatePerSecond | None
    rate_limit_burst: RateBurst | None
    tag_schema: (
        Annotated[SchemaName, Meta(description="the tag schema its postbacks must fit")] | None
    ) = None


class NewSecret(Key, kw_only=True):
    """A key with its new secret: the answer of a create or a rotation, the only time
    the secret is shown (and, at creation, the signing secret)."""

    key: str
    example_url: str
    signing_secret: str | UnsetType = UNSET


class Publishers(Struct, kw_only=True):
    items: list[Publisher]


class Keys(Struct, kw_only=True):
    items: list[Key]


class KeyTest(Body):
    """The console's "Test a key" form: one postback through the key, as a publisher
    would send it (the postback API checks it, and answers as it would them)."""

    caller_number: AnyNumber = ""
    tags: Annotated[
        str, Meta(max_length=MAX_TEST_TAGS, description="name=value, one a line (or joined by &)")
    ] = ""


# -- admin: tag schemas ---------------------------------------------------------------------

MAX_SCHEMA_TAGS = 1000  # tags one schema declares
MAX_PATTERN = 1000  # characters of a string tag's pattern
MAX_ENUM_VALUES = 1000
TagType = Literal["string", "integer", "number", "boolean", "enum", "date", "email", "phone", "url"]
TAG_TYPES: tuple[str, ...] = typing.get_args(TagType)
_NUMERIC = ("integer", "number")
_RULE_TYPES = {  # the rules only some types take
    "min": _NUMERIC,
    "max": _NUMERIC,
    "max_length": ("string",),
    "pattern": ("string",),
    "values": ("enum",),
}
EnumValue = Annotated[str, Meta(min_length=1, max_length=200)]


class TagRule(Body):
    """What one declared tag's value must be; the value is stored in its canonical text
    (integers without leading zeros, booleans true/false, enums as declared, dates
    YYYY-MM-DD, phones E.164, emails with a lower-case domain)."""

    type: TagType
    required: Annotated[bool, Meta(description="every postback must carry it")] = False
    min: Annotated[float, Meta(description="integer, number: the least value")] | None = None
    max: Annotated[float, Meta(description="integer, number: the greatest value")] | None = None
    max_length: Annotated[int, Meta(ge=1, description="string: characters at most")] | None = None
    pattern: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=MAX_PATTERN,
                description="string: a regular expression"
                " the whole value must match (RE2 syntax: no backreferences or lookaround)",
            ),
        ]
        | None
    ) = None
    values: (
        Annotated[
            list[EnumValue],
            Meta(
                min_length=1,
                max_length=MAX_ENUM_VALUES,
                description="enum: the values, matched without regard to case",
            ),
        ]
        | None
    ) = None
    pii: Annotated[bool, Meta(description="personal data: masked in the console")] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for rule, types in _RULE_TYPES.items():
            if getattr(self, rule) is not None and self.type not in types:
                raise ValueError(f"{rule} applies to type {' or '.join(types)}, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.type == "enum":
            if self.values is None:
                raise ValueError("an enum needs its values")
            if any("\x00" in value for value in self.values):
                raise ValueError("values must not contain NUL")
            folded = [value.casefold() for value in self.values]
            if len(set(folded)) < len(folded):
                raise ValueError("an enum's values must differ other than by case")
        if self.pattern is not None:
            compile_pattern(self.pattern)


class TagSchema(Body):
    """The tags a key's postbacks may carry: each declared tag's rule, and what becomes
    of a tag the schema does not declare."""

    tags: Annotated[
        dict[str, TagRule],
        Meta(max_length=MAX_SCHEMA_TAGS, description="tag name (folded to lower case) -> rule"),
    ] = msgspec.field(default_factory=dict)
    unknown: Annotated[
        Literal["accept", "reject", "drop"],
        Meta(description="an undeclared tag: kept as is, refused (422 unknown_tag), or left out"),
    ] = "accept"

    def __post_init__(self) -> None:
        super().__post_init__()
        folded: dict[str, TagRule] = {}
        for name, rule in self.tags.items():
            if not _TAG_NAME.fullmatch(name):
                raise ValueError(
                    f"tag name {name[:64]!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
                )
            if name.lower() in folded:
                raise ValueError(f"tag {name!r} is declared twice (names are folded to lower case)")
            folded[name.lower()] = rule
        self.tags = folded


_TAG_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # as postbacks reads a tag's name


class NamedTagSchema(TagSchema, kw_only=True):
    """A tag schema as stored."""

    name: SchemaName
    created_at: Time
    updated_at: Time


class TagSchemaList(Struct, kw_only=True):
    items: list[NamedTagSchema]


# -- admin: a caller's data --------------------------------------------------------------


class PendingTag(Struct, kw_only=True):
    """A tag waiting in Redis for the caller's next call."""

    name: str
    value: str
    publisher_id: int
    key_id: int
    set_at: Time
    expires_at: Time


class CallerData(Struct, kw_only=True):
    """What Redis holds of a caller now: its pending tags and its calls."""

    caller_number: E164
    pending: list[PendingTag]
    calls: list[Call]


class CallerQuery(Body):
    publisher_id: Annotated[Id, Meta(description="only this publisher's pending tags")] | None = (
        None
    )


class CallerLookup(Body):
    """The console's caller search."""

    number: AnyNumber = ""


class EraseConfirm(Body):
    """The console's erase form: the box that says it is meant."""

    confirm: Annotated[bool, Meta(description="true: erase this caller's data")] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.confirm:
            raise ValueError("tick the box to confirm the erase: it cannot be undone")


class Retracted(Struct, kw_only=True):
    caller_number: E164
    retracted: Annotated[int, Meta(description="pending tags removed")]


class Erasure(Struct, kw_only=True):
    """What an erase removed. Recorded with a salted hash of the number, never the
    number."""

    erased_at: Time
    number_hash: Annotated[str, Meta(description="HMAC-SHA256 of the number, hex")]
    pending_tags: Annotated[int, Meta(description="pending tags deleted from Redis")]
    calls_in_redis: Annotated[int, Meta(description="calls deleted from Redis")]
    log_entries: Annotated[
        int, Meta(description="log entries not yet in Postgres, redacted in the Redis streams")
    ]
    postbacks: Annotated[int, Meta(description="postback log rows redacted in Postgres")]
    call_records: Annotated[int, Meta(description="call records redacted in Postgres")]


class KeySchemaChoice(Body):
    """The console's form choosing a key's tag schema: none when left blank."""

    tag_schema: SchemaName | None = None


# -- routing ----------------------------------------------------------------------------


class ConnectRequest(Body):
    caller_number: str | int | None = None
    call_uuid: CallUuid | None = None
    publisher_id: PublisherRef | int | None = None
    campaign: Campaign | None = None


class TagSource(Struct, kw_only=True):
    """Who set a tag, and when."""

    publisher_id: int
    key_id: int
    set_at: Time


Tags = Annotated[dict[str, str], Meta(description="tag name -> value")]
Sources = Annotated[dict[str, TagSource], Meta(description="tag name -> who set it, when")]
E164 = Annotated[str, Meta(description="E.164, e.g. +15551234567")]


class _CallBase(Struct, kw_only=True):
    call_uuid: str
    caller_number: E164
    state: Literal["in_progress", "completed"]
    tags: Tags
    tag_sources: Sources
    started_at: Time


class Call(_CallBase, kw_only=True):
    """A call as routing reads it, live from Redis."""

    publisher_id: Annotated[str, Meta(description="as routing gave it at connect")] | None = None
    campaign: str | None = None
    ended_at: Time | UnsetType = UNSET


# -- the postback log and call records ---------------------------------------------------


class PostbackFilters(Body):
    publisher_id: Id | None = None
    key_id: Id | None = None
    caller_number: AnyNumber | None = None
    call_uuid: (
        Annotated[CallUuid, Meta(description="the call the tags went to (with caller_number)")]
        | None
    ) = None
    status: (
        Annotated[
            str,
            Meta(
                description="accepted, rejected, a status string or an error code",
                extra_json_schema={"enum": list(STATUS_FILTERS)},
            ),
        ]
        | None
    ) = None
    replayed: (
        Annotated[bool, Meta(description="true: the repeats of idempotent postbacks only")] | None
    ) = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status is not None and self.status not in STATUS_FILTERS:
            raise ValueError(
                f"status {self.status[:64]!r} is none of: accepted, rejected, a status string"
                " or an error code of the postback API"
            )


class CallFilters(Body):
    publisher_id: PublisherRef | None = None
    campaign: Campaign | None = None
    caller_number: AnyNumber | None = None
    state: Literal["in_progress", "completed"] | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


class PostbackEntry(Struct, kw_only=True):
    """One request to the publisher API, accepted or refused."""

    id: Annotated[str, Meta(description="a UUID")]
    received_at: Time
    method: str
    publisher_id: int | None
    key_id: int | None
    key_prefix: Annotated[str, Meta(description="the start of an unknown key")] | None
    caller_raw: Annotated[str, Meta(description="the caller number as posted")] | None
    caller_number: E164 | None
    call_uuid: Annotated[str, Meta(description="the call the tags went to")] | None
    tags: Tags
    status: Annotated[str, Meta(description="an accepted postback's status string")] | None
    error: Annotated[str, Meta(description="a refused postback's error code")] | None
    message: Annotated[str, Meta(description="what the refusal told the client")] | None
    http_status: int
    remote_addr: str | None
    user_agent: str | None
    latency_us: Annotated[int, Meta(description="from the request to the answer, µs")] | None
    replayed: Annotated[
        bool, Meta(description="a repeat of an idempotent postback: answered, nothing written")
    ] = False


class CallRecord(_CallBase, kw_only=True):
    """A call as the workers last recorded it in Postgres."""

    ended_at: Time | None
    publisher_id: str | None
    campaign: str | None
    updated_at: Annotated[Time, Meta(description="the latest start, end or tag time")]


class PostbackPage(Struct, kw_only=True):
    items: list[PostbackEntry]
    next_cursor: str | None


class CallPage(Struct, kw_only=True):
    items: list[CallRecord]
    next_cursor: str | None


# -- the publisher API's parameters and answer, health ----------------------------------


class PostbackParams(Struct, kw_only=True):
    """The named parameters of a postback; every other parameter is a tag."""

    key: Annotated[str, Meta(description="the postback key, unless in the path")] | None = None
    caller_number: Annotated[str, Meta(description="any format; or call_uuid")] | None = None
    call_uuid: CallUuid | None = None
    idempotency_key: IdempotencyKey | None = None


class BulkParams(Struct, kw_only=True):
    """The query of a bulk post: its key (unless in the path)."""

    key: Annotated[str, Meta(description="the postback key, unless in the path")] | None = None


BulkItem = Annotated[
    dict[str, Any],
    Meta(
        description="one postback's parameters: caller_number or call_uuid, idempotency_key"
        " (optional), and the tags; values are strings, numbers or booleans (checked per item)"
    ),
]


class BulkBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """A bulk post's JSON body (or CSV with a header row: caller_number or call_uuid,
    idempotency_key, one column per tag; an empty cell is no tag)."""

    items: Annotated[list[BulkItem], Meta(max_length=MAX_BULK_ITEMS)]


class PostbackAnswer(Struct, kw_only=True):
    tag_values: dict[str, str]
    caller_number: str
    status: Literal[
        "call not found, tags stored",
        "call in progress, tags applied",
        "completed call found, tags applied",
    ]
    call_uuid: str | UnsetType = UNSET
    expires_at: str | UnsetType = UNSET
    dropped_tags: (
        Annotated[
            list[str],
            Meta(
                description="tags the key's tag schema does not declare, left out (unknown: drop)"
            ),
        ]
        | UnsetType
    ) = UNSET


class Error(Struct, kw_only=True):
    error: str
    message: str


class BulkResult(Struct, kw_only=True):
    """One item's answer: its HTTP status and the body a single postback of it gets
    (a PostbackAnswer, or an Error), `replayed` for a repeat of an idempotent one."""

    http_status: int
    tag_values: dict[str, str] | UnsetType = UNSET
    caller_number: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    call_uuid: str | UnsetType = UNSET
    expires_at: str | UnsetType = UNSET
    error: str | UnsetType = UNSET
    message: str | UnsetType = UNSET
    replayed: bool | UnsetType = UNSET


class BulkAnswer(Struct, kw_only=True):
    results: Annotated[list[BulkResult], Meta(description="one an item, in item order")]


class Health(Struct, kw_only=True):
    status: str


class LogBacklog(Struct, kw_only=True):
    backlog: int
    backlog_postbacks: int
    backlog_calls: int
    oldest_entry_age_seconds: float
    max_backlog: int
    accepting: bool


class Readiness(Struct, kw_only=True):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    log: LogBacklog


# -- reading bodies and queries ---------------------------------------------------------

T = TypeVar("T", bound=Struct)
_ROOT_TYPE = "Expected `object`"


def _refused(exc: msgspec.ValidationError) -> ApiError:
    message = str(exc)
    if message.startswith(_ROOT_TYPE):  # not an object at all: the body is unreadable
        return ApiError("invalid_body", "the body must be a JSON object")
    return ApiError("invalid_request", message)


def decode(body: bytes, model: type[T]) -> T:
    """The JSON body as `model` (an empty body is {}); ApiError 400 `invalid_body` or
    422 `invalid_request` naming the field."""
    try:
        return msgspec.json.decode(body if body.strip() else b"{}", type=model)
    except msgspec.ValidationError as exc:
        raise _refused(exc) from exc
    except msgspec.DecodeError as exc:
        raise ApiError("invalid_body", "the body is not valid JSON") from exc


def convert(values: dict[str, Any], model: type[T]) -> T:
    """Text values (a query string, CLI arguments) as `model`, numbers read from text;
    ApiError 422 `invalid_request` naming the field."""
    try:
        return msgspec.convert(values, model, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError("invalid_request", str(exc)) from exc


def encode(value: Struct) -> bytes:
    return msgspec.json.encode(value)


def from_row(model: type[T], row: asyncpg.Record, **computed: Any) -> T:
    """A model from a database row: its columns by name (times in the one ISO format),
    with `computed` values for the fields that are no column as they are."""
    values = {name: iso(v) if isinstance(v, datetime) else v for name, v in row.items()}
    return msgspec.convert({**values, **computed}, model)


def tag_sources(call: store.Call) -> dict[str, TagSource]:
    """Where each of a call's tags came from, as the routing API answers it and the
    calls table keeps it."""
    return {
        name: TagSource(
            publisher_id=source.publisher_id, key_id=source.key_id, set_at=iso_ms(source.set_at_ms)
        )
        for name, source in call.sources.items()
    }


def call_model(call: store.Call) -> Call:
    """The API's view of a call as the store holds it."""
    return Call(
        call_uuid=call.call_uuid,
        caller_number=call.caller_number,
        state=call.state,  # type: ignore[arg-type]
        tags=call.tags,
        tag_sources=tag_sources(call),
        started_at=iso_ms(call.started_ms),
        publisher_id=call.publisher_id,
        campaign=call.campaign,
        ended_at=iso_ms(call.ended_ms) if call.ended_ms is not None else UNSET,
    )
