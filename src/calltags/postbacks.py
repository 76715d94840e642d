"""The publisher API: GET|POST /data_writing and /data_writing/{key}, and POST
/data_writing/bulk and /data_writing/{key}/bulk, a plain ASGI app reading the scope
itself (the busiest endpoint: Starlette's Request, Response, router and middleware would
cost more than its own work). Browsers post lead forms to it straight from any origin,
so it answers CORS itself, preflight included.

A request is read (its key recognised, its signature checked), then each postback it
carries, one for a single post and one an item for a bulk post, goes through `_handle`
with its parameters: a bulk item is answered and logged exactly as the same postback
posted alone.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import re
import time
from typing import Any
from urllib.parse import urlencode

import msgspec
import orjson
from msgspec import UNSET
from starlette.types import Receive, Scope, Send

from calltags import models, phone, signing
from calltags.asgi import Incoming, send_json
from calltags.errors import (
    LOGGED_CODES,
    ApiError,
    StoreUnavailable,
    WriteUnconfirmed,
    call_not_found,
    gathered,
)
from calltags.http import Answer, error_answer, parse_object, query_pairs
from calltags.keycache import KeyInfo
from calltags.log import EntryHead
from calltags.metrics import UNMATCHED, Metrics
from calltags.models import (
    MAX_BULK_BODY_BYTES,
    MAX_BULK_ITEMS,
    BulkAnswer,
    BulkBody,
    BulkParams,
    PostbackAnswer,
    PostbackParams,
    encode,
)
from calltags.operations import Api, Routes
from calltags.services import Services
from calltags.store import (
    CallNotFound,
    IdempotencyKeyReused,
    Idempotent,
    PostbackResult,
    RateLimit,
    RateLimited,
    TagWrite,
)
from calltags.tagschemas import Conform
from calltags.times import iso_ms, now_ms

log = logging.getLogger("calltags")

PATH = "/data_writing"
_KEYED = PATH + "/"
BULK = "/bulk"

MAX_TAGS = 100
MAX_TAG_VALUE_BYTES = 1024
MAX_PARAMS = 1000  # parameters read from one request; more is refused before any parsing
RESERVED = frozenset(("key", "caller_number", "call_uuid", "idempotency_key"))
_TAG_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# Tag names seen to be valid, folded to lower case: publishers send the same few names
# again and again, and a dict lookup costs a fraction of the pattern's match.
_TAG_NAMES: dict[str, str] = {}
MAX_KNOWN_TAG_NAMES = 4096
CALL_UUID = re.compile(models.CALL_UUID)
IDEMPOTENCY_KEY = re.compile(models.IDEMPOTENCY_KEY)
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on the answer of a repeat
_NOT_FINGERPRINTED = ("key", "idempotency_key")  # the scope and the key itself
DOC = (
    "Parameters come from the query string and, for POST, from a JSON object or"
    " url-encoded form body (the body wins; of a repeated parameter the last wins)."
    " `key` (or the path) and `caller_number` or `call_uuid` are required; every other"
    f" parameter is a tag: names of 1-64 of A-Z a-z 0-9 _ . - (folded to lower case),"
    f" values up to {MAX_TAG_VALUE_BYTES} bytes, at most {MAX_TAGS} tags. With an"
    f" `{IDEMPOTENCY_HEADER}` header or `idempotency_key` parameter, a repeat with the same"
    " parameters within CALLTAGS_IDEMPOTENCY_SECONDS gets the first answer again (with"
    f" `{REPLAYED_HEADER}: true`) and writes nothing; the key with other parameters is"
    " 422 `idempotency_key_reused`."
)
BULK_DOC = (
    f'Up to {MAX_BULK_ITEMS} postbacks in one request: JSON `{{"items": [...]}}`, each item'
    " a postback's parameters, or `text/csv` with a header row (`caller_number` or"
    " `call_uuid`, optionally `idempotency_key`, then one column per tag; an empty cell is"
    " no tag). The key is in the path or the query. The answer is 200 with one result an"
    " item, in item order: its `http_status` and the body a single postback of it gets;"
    " an item's error fails no other. Each item is logged, and counts against the key's"
    " rate limit, as one postback."
)


def _text(name: str, value: Any) -> str:
    """A parameter's value as text: JSON numbers and booleans become their text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ApiError(
        "invalid_tag",
        f"{name[:64]!r}: values must be strings, numbers or booleans",
    )


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return query_pairs(text, MAX_PARAMS)
    except UnicodeDecodeError as exc:
        raise ApiError("invalid_body", "the form body is not valid UTF-8") from exc
    except ValueError as exc:
        raise ApiError("invalid_body", f"more than {MAX_PARAMS} parameters") from exc


def path_key(path: str) -> str | None:
    """The key in a /data_writing/{key} path; "" for /data_writing; None for any other
    path (a slash in the key, an empty key, a bulk path)."""
    if path == PATH:
        return ""
    if path.startswith(_KEYED):
        key = path[len(_KEYED) :]
        if key and "/" not in key and key != BULK[1:]:
            return key
    return None


def bulk_path_key(path: str) -> str | None:
    """The key in a /data_writing/{key}/bulk path; "" for /data_writing/bulk; None for
    any other path."""
    if not path.endswith(BULK):
        return None
    return path_key(path[: -len(BULK)])


def _query(posted: Incoming) -> dict[str, str]:
    """The query parameters (of a repeat, the last wins)."""
    try:
        # As Starlette reads a query string: Latin-1 text, %-escapes as UTF-8.
        return dict(query_pairs(posted.query.decode("latin-1"), MAX_PARAMS))
    except ValueError as exc:
        raise ApiError("invalid_query", f"more than {MAX_PARAMS} parameters") from exc


async def _body_params(posted: Incoming, params: dict[str, str]) -> bytes:
    """Add a POST's form or JSON body's parameters to `params` (the body wins); the raw
    body."""
    if posted.method != "POST":
        return b""
    body = await posted.body()
    if not body.strip():
        return body
    content_type = (posted.header(b"content-type") or "").split(";")[0].strip().lower()
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if content_type == "multipart/form-data":
        raise ApiError("unsupported_media_type", "post JSON or a url-encoded form")
    if is_json or (content_type in ("", "text/plain") and body.lstrip()[:1] == b"{"):
        data = parse_object(body)
        if len(data) > MAX_PARAMS:
            raise ApiError("invalid_body", f"more than {MAX_PARAMS} parameters")
        for name, value in data.items():
            params[name] = _text(name, value)
    else:
        params.update(_form_pairs(body))
    return body


def _tags(params: dict[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for name, value in params.items():
        if name in RESERVED:
            continue
        folded = _TAG_NAMES.get(name)
        if folded is None:
            if not _TAG_NAME.fullmatch(name):
                raise ApiError(
                    "invalid_tag",
                    f"tag name {name[:64]!r} must be 1-64 characters of A-Z a-z 0-9 _ . -",
                )
            folded = name.lower()
            if len(_TAG_NAMES) < MAX_KNOWN_TAG_NAMES:
                _TAG_NAMES[name] = folded
        if value.isascii():  # a byte a character
            size = len(value)
        else:
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise ApiError("invalid_tag", f"tag {name!r} is not valid UTF-8") from exc
        if size > MAX_TAG_VALUE_BYTES:
            raise ApiError("invalid_tag", f"tag {name!r} is over {MAX_TAG_VALUE_BYTES} bytes")
        tags[folded] = value
    if not tags:
        raise ApiError("no_tags", "the postback carries no tags")
    if len(tags) > MAX_TAGS:
        raise ApiError("too_many_tags", f"at most {MAX_TAGS} tags a postback")
    return tags


class _Outcome:
    """What one postback (a single post, a bulk post's item) did, for the log entry
    written whatever happened, and what it is answered: `answer` (`replayed`: a repeat's)
    or `failure`."""

    __slots__ = (
        "answer", "call_uuid", "caller_number", "caller_raw", "dropped", "failure", "key",
        "logged", "params", "received_ms", "replayed", "secret", "tags",
    )  # fmt: skip

    def __init__(self, key: KeyInfo | None = None) -> None:
        self.received_ms = now_ms()
        self.params: dict[str, str] = {}
        self.secret: str | None = None
        self.key = key
        self.caller_raw: str | None = None
        self.caller_number: str | None = None
        self.call_uuid: str | None = None
        self.tags: dict[str, str] | None = None
        self.dropped: list[str] = []  # tags the key's schema left out
        self.logged = False  # the store appended the log entry with the write
        self.answer: PostbackAnswer | None = None
        self.replayed = False
        self.failure: ApiError | StoreUnavailable | None = None


def _head(req: Incoming, out: _Outcome) -> EntryHead:
    """What the log entries of the request's postbacks through `out.key` share."""
    key = out.key
    return EntryHead(
        method=req.method,
        publisher_id=key.publisher_id if key else None,
        key_id=key.id if key else None,
        key_prefix=out.secret[:8] if out.secret and key is None else None,
        remote_addr=req.address,
        user_agent=req.header(b"user-agent"),
    )


def _entry(
    req: Incoming,
    out: _Outcome,
    failure: ApiError | None,
    status: str | None,
    replayed: bool = False,
    head: EntryHead | None = None,
) -> bytes:
    """The postback's log entry; `head`: the request's `_head`, when known."""
    tags = out.tags
    checked = tags is not None
    if tags is None:
        tags = {k: v for k, v in out.params.items() if k not in RESERVED}
    return (head or _head(req, out)).encode(
        received_ms=out.received_ms,
        caller_raw=out.caller_raw,
        caller_number=out.caller_number,
        call_uuid=out.call_uuid,
        tags=tags,
        status=status,
        error=failure.code if failure is not None else None,
        message=failure.message if failure is not None else None,
        http_status=failure.status if failure is not None else 200,
        latency_us=(time.perf_counter_ns() - req.started_ns) // 1000,
        tags_checked=checked,
        replayed=replayed,
    )


def _rate_limited(exc: RateLimited) -> ApiError:
    seconds = max(1, -(-exc.retry_after_ms // 1000))
    return ApiError(
        "rate_limited",
        f"this key may post {exc.limit:g} times a second (bursts of {exc.burst}); "
        f"retry in {seconds} s",
        {
            "Retry-After": str(seconds),
            "RateLimit-Limit": str(exc.burst),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(seconds),
        },
    )


async def _recognise(svc: Services, req: Incoming, secret: str) -> KeyInfo:
    """The key `secret` names, or ApiError 401 `invalid_key` (429 while the address is
    over the failed-key limit). A key this service knows still works from an address
    over the limit; an unknown one is then refused without asking Postgres."""
    address = req.address or ""
    guard = svc.guard
    key = svc.resolver.cached(secret)
    if key is not None:
        return key
    wait = guard.blocked_for(address)
    key = await svc.resolver.resolve(secret, fallback=not wait)
    if key is not None:
        return key
    if wait:
        raise ApiError("too_many_invalid_keys", headers={"Retry-After": str(max(1, round(wait)))})
    if guard.per_minute:
        attempts, left_ms = await svc.store.count_failure(address, guard.WINDOW_MS)
        guard.record(address, attempts, left_ms)
    raise ApiError("invalid_key")


def _admit(key: KeyInfo, req: Incoming) -> None:
    """ApiError 403 unless the key may post now from the request's address."""
    if key.paused:
        raise ApiError("key_paused")
    if not key.allows(req.address):
        raise ApiError("address_not_allowed")


def _note_caller(out: _Outcome, params: dict[str, str], region: str) -> None:
    """The caller as posted and, when it is a number, normalized: logged with whatever
    refusal comes, so that the log's caller filter finds it."""
    out.caller_raw = params.get("caller_number") or None
    out.caller_number = None
    if out.caller_raw is not None:
        try:  # noqa: SIM105  (try costs nothing here; suppress() an object a postback)
            out.caller_number = phone.normalize(out.caller_raw, region)
        except ApiError:  # refused later, in its turn
            pass


def _verified(
    svc: Services, req: Incoming, out: _Outcome, key: KeyInfo | None, body: bytes
) -> KeyInfo:
    """The key, once it may post this request: not paused, from an allowed address, with
    a valid signature when it wants one (or one is presented)."""
    if key is None:
        raise ApiError("missing_key")
    _admit(key, req)
    presented = req.header(_SIGNATURE)
    if key.require_signature or presented:
        signing.verify(
            key.signing_secret,
            timestamp=req.header(_TIMESTAMP),
            presented=presented,
            method=req.method,
            path=req.path,
            query=req.query.decode("latin-1"),
            body=body,
            now=out.received_ms / 1000,
            tolerance=svc.settings.signature_tolerance_seconds,
        )
    return key


async def _read(svc: Services, req: Incoming, out: _Outcome, key: KeyInfo | None = None) -> KeyInfo:
    """Read a single postback's parameters into `out`; the key it may post with. The key
    is recognised as soon as it is read (from the path, then the query, or the body), so
    that every refusal after that, the body's included, is logged under it. `key`: the
    key, already known (a console test)."""
    region = svc.settings.default_region
    in_path = path_key(req.path)
    out.params = params = _query(req)
    _note_caller(out, params, region)
    secret = in_path or params.get("key")
    refused: ApiError | None = None  # the query's key, unless the body names another
    if key is None and secret:
        out.secret = secret
        try:
            key = await _recognise(svc, req, secret)
        except ApiError as exc:
            if in_path or req.method != "POST":
                raise
            refused = exc
    out.key = key
    raw_body = await _body_params(req, params)
    _note_caller(out, params, region)
    if not in_path and params.get("key") and params["key"] != secret:  # the body names it
        out.secret = secret = params["key"]
        out.key = key = await _recognise(svc, req, secret)
    elif refused is not None:
        raise refused
    key = _verified(svc, req, out, key, raw_body)
    header = req.header(_IDEMPOTENCY)
    if header is not None and params.setdefault("idempotency_key", header) != header:
        raise ApiError(
            "invalid_idempotency_key",
            f"the {IDEMPOTENCY_HEADER} header and the idempotency_key parameter differ",
        )
    return key


def _idempotent(params: dict[str, str], given: str, until_ms: int, answer: bytes) -> Idempotent:
    """The records' names and the fingerprint of an idempotent postback's parameters."""
    named = sorted((k, v) for k, v in params.items() if k not in _NOT_FINGERPRINTED)
    return Idempotent(
        token=hashlib.blake2b(given.encode(), digest_size=16).hexdigest(),
        fingerprint=hashlib.blake2b(orjson.dumps(named), digest_size=16).digest(),
        until_ms=until_ms,
        answer=answer,
    )


def _answered(
    tags: dict[str, str], caller: str, dropped: list[str], result: PostbackResult
) -> PostbackAnswer:
    return PostbackAnswer(
        tag_values=tags,
        caller_number=caller,
        status=result.status,  # type: ignore[arg-type]
        call_uuid=result.call_uuid if result.call_uuid is not None else UNSET,
        expires_at=iso_ms(result.expires_at_ms) if result.expires_at_ms is not None else UNSET,
        dropped_tags=dropped or UNSET,
    )


def _prepare(out: _Outcome, conform: Conform, region: str) -> None:
    """Check a postback's parameters: its caller, tags (conformed to the key's schema)
    and idempotency key; ApiError if they do not make a write."""
    params = out.params
    out.call_uuid = call_uuid = params.get("call_uuid") or None
    caller_raw = out.caller_raw
    if call_uuid is None and caller_raw is None:
        raise ApiError("missing_caller")
    if out.caller_number is None and caller_raw is not None:  # not a number: refused now
        out.caller_number = phone.normalize(caller_raw, region)
    out.tags = _tags(params)
    out.tags, out.dropped = conform(out.tags)  # checked, in canonical text
    given = params.get("idempotency_key")
    if given is not None and not IDEMPOTENCY_KEY.fullmatch(given):
        raise ApiError("invalid_idempotency_key")
    if call_uuid is not None and not CALL_UUID.fullmatch(call_uuid):
        raise call_not_found(call_uuid)


async def _find_calls(svc: Services, outs: list[_Outcome]) -> bool:
    """The callers of the calls the postbacks address, looked up together: each one's
    caller, or its failure (call_not_found, the caller posted differs, Redis down);
    whether any failed."""
    lookups = (svc.store.caller_of(out.call_uuid or "") for out in outs)
    for out, caller in zip(outs, await gathered(lookups, StoreUnavailable), strict=True):
        if isinstance(caller, StoreUnavailable):
            out.failure = caller
        elif caller is None or (out.caller_number is not None and out.caller_number != caller):
            out.failure = call_not_found(out.call_uuid or "")
        else:
            out.caller_number = caller
    return any(out.failure is not None for out in outs)


def _failed(out: _Outcome, failure: Exception) -> ApiError | StoreUnavailable:
    """What a write's refusal or failure is answered with; `out.logged` when the store
    logged it."""
    if isinstance(failure, CallNotFound):
        refusal = call_not_found(out.call_uuid or "")
    elif isinstance(failure, RateLimited):
        refusal = _rate_limited(failure)
    elif isinstance(failure, IdempotencyKeyReused):
        refusal = ApiError("idempotency_key_reused")
    elif isinstance(failure, WriteUnconfirmed):  # the store logged it as answered 503
        refusal = ApiError("unavailable", "the write is not confirmed (it may have happened)")
    else:  # the write may not have happened: _log_failures logs what the client saw
        assert isinstance(failure, StoreUnavailable), failure
        return failure
    out.logged = True
    return refusal


async def _handle(svc: Services, req: Incoming, key: KeyInfo, outs: list[_Outcome]) -> None:
    """Write the tags of postbacks through `key` (each with its parameters read, and its
    caller noted), together: one store call for all. Each gets its `answer` (a repeat of
    an idempotent postback the first one's) or its `failure`, logged. A single post's
    postback and the items of a bulk post come here."""
    settings = svc.settings
    try:
        conform = svc.tag_schemas.known(key) or await svc.tag_schemas.rules(key)
    except StoreUnavailable as exc:
        for out in outs:
            out.failure = exc
        return await _log_failures(svc, req, outs)
    region = settings.default_region
    failed = addressed = False
    for out in outs:
        if out.failure is None:
            try:
                _prepare(out, conform, region)
                addressed = addressed or out.call_uuid is not None
            except ApiError as exc:
                out.failure = exc
                failed = True
        else:
            failed = True
    if addressed:
        addressing = [o for o in outs if o.failure is None and o.call_uuid is not None]
        failed = await _find_calls(svc, addressing) or failed
    writing = [out for out in outs if out.failure is None] if failed else outs
    limit = settings.rate_limit
    if key.rate_per_second is not None:
        limit = (key.rate_per_second, key.rate_burst or max(1, int(key.rate_per_second)))
    seconds = settings.idempotency_seconds
    head = _head(req, writing[0]) if writing else None  # the batch's key is every write's
    writes = [_write(seconds, req, out, head) for out in writing]
    try:
        results = await svc.store.write_batch(
            writes,
            publisher_id=key.publisher_id,
            key_id=key.id,
            cutoff_seconds=key.cutoff_seconds,
            storage_seconds=key.storage_seconds,
            rate=RateLimit(*limit) if limit is not None else None,
        )
    except StoreUnavailable as exc:
        results = [exc] * len(writes)
    replays: list[tuple[_Outcome, bytes]] = []  # logged here: the store writes nothing
    for out, result in zip(writing, results, strict=True):
        if isinstance(result, Exception):
            out.failure = _failed(out, result)
            failed = True
        elif not result.replayed:
            out.logged = True
            assert out.tags is not None and out.caller_number is not None
            out.answer = _answered(out.tags, out.caller_number, out.dropped, result)
        else:
            assert result.answer is not None
            first_tags, first_caller, first_dropped = orjson.loads(result.answer)
            out.answer = answer = _answered(first_tags, first_caller, first_dropped, result)
            out.replayed = True
            out.call_uuid = result.call_uuid or out.call_uuid
            replays.append((out, _entry(req, out, None, answer.status, replayed=True)))
    if replays:
        appending = (svc.store.append_log(entry) for _, entry in replays)
        appended = await gathered(appending, StoreUnavailable)
        for (out, _), refused in zip(replays, appended, strict=True):
            if isinstance(refused, StoreUnavailable):
                out.answer, out.replayed, out.failure = None, False, refused
                failed = True
            else:
                out.logged = True
    if failed:
        await _log_failures(svc, req, outs)


def _write(
    idempotency_seconds: int, req: Incoming, out: _Outcome, head: EntryHead | None
) -> TagWrite:
    """A checked postback's write, with its log entry."""
    assert out.caller_number is not None and out.tags is not None
    given = out.params.get("idempotency_key")
    idempotent = None
    if given is not None:
        until_ms = out.received_ms + idempotency_seconds * 1000
        first = orjson.dumps([out.tags, out.caller_number, out.dropped])
        idempotent = _idempotent(out.params, given, until_ms, first)
    entry = _entry(req, out, None, None, head=head)
    return TagWrite(out.caller_number, out.tags, out.call_uuid or "", entry, idempotent)


_SIGNATURE = signing.SIGNATURE_HEADER.encode()
_TIMESTAMP = signing.TIMESTAMP_HEADER.encode()
_IDEMPOTENCY = IDEMPOTENCY_HEADER.lower().encode()
_REPLAYED = {REPLAYED_HEADER: "true"}
_ALLOW = "GET, POST, OPTIONS"
_ALLOW_BULK = "POST, OPTIONS"
_ORIGIN = b"origin"
_PREFLIGHT_METHOD = b"access-control-request-method"
_PREFLIGHT_HEADERS = b"access-control-request-headers"
_PREFLIGHT_PRIVATE = b"access-control-request-private-network"
# CORS for any origin, as lead forms post from anywhere. Every answer differs by Origin.
_VARY = (b"vary", b"Origin")
_ANY_ORIGIN = (b"access-control-allow-origin", b"*")
_EXPOSE = (b"access-control-expose-headers", REPLAYED_HEADER.encode())
_PREFLIGHT = [
    (
        b"vary",
        b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers,"
        b" Access-Control-Request-Private-Network",
    ),
    _ANY_ORIGIN,
    (b"access-control-allow-methods", _ALLOW.encode()),
    (b"access-control-max-age", b"86400"),  # 1 day a browser may keep the preflight
]


async def _answer(svc: Services, req: Incoming, key: KeyInfo | None = None) -> tuple[Answer, str]:
    """Write tags for a caller.

    What a GET or POST gets, and its outcome (a status string or an error code)."""
    if svc.log.full:  # refused before any write; not logged: the log is what is full
        return _log_full(svc)
    out = _Outcome()
    try:
        key = await _read(svc, req, out, key)
    except (ApiError, StoreUnavailable) as exc:
        out.failure = exc
        await _log_failures(svc, req, [out])
    else:
        await _handle(svc, req, key, [out])
    answer = out.answer
    if answer is not None:
        return (200, encode(answer), _REPLAYED if out.replayed else None), answer.status
    assert isinstance(out.failure, ApiError)
    return error_answer(out.failure), out.failure.code


def _log_full(svc: Services) -> tuple[Answer, str]:
    svc.log.refused += 1
    full = ApiError("unavailable", "the postback log is full, retry shortly")
    return error_answer(full), full.code


async def _log_failures(svc: Services, req: Incoming, outs: list[_Outcome]) -> None:
    """Log the postbacks that failed and are not logged yet, together; each one's failure
    as the ApiError it is answered with."""
    unlogged: list[_Outcome] = []
    for out in outs:
        failure = out.failure
        if failure is None:
            continue
        if not isinstance(failure, ApiError):
            log.warning("store unavailable: %s", failure)
            out.failure = ApiError("unavailable")
            out.logged = False  # the write may not have happened: log what the client saw
        if not out.logged:
            unlogged.append(out)
    if not unlogged:
        return
    appending = (svc.store.append_log(_entry(req, out, _refusal(out), None)) for out in unlogged)
    appended = await gathered(appending, StoreUnavailable)
    for out, refused in zip(unlogged, appended, strict=True):
        if isinstance(refused, StoreUnavailable):
            out.failure = ApiError("unavailable")
        out.logged = True


def _refusal(out: _Outcome) -> ApiError:
    assert isinstance(out.failure, ApiError)
    return out.failure


# -- bulk posts ------------------------------------------------------------------------

_CSV = "text/csv"


def _json_items(body: bytes) -> list[dict[str, Any]]:
    try:
        items: list[dict[str, Any]] = msgspec.json.decode(body, type=BulkBody).items
        return items
    except msgspec.ValidationError as exc:
        with contextlib.suppress(orjson.JSONDecodeError):
            found = orjson.loads(body).get("items") if body.lstrip()[:1] == b"{" else None
            if isinstance(found, list) and len(found) > MAX_BULK_ITEMS:
                raise _too_many() from exc
        raise ApiError("invalid_body", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError("invalid_body", "the body is not valid JSON") from exc


def _too_many() -> ApiError:
    return ApiError("too_many_items", f"at most {MAX_BULK_ITEMS} items a bulk post")


def _csv_items(body: bytes) -> list[dict[str, Any]]:
    """The rows of a CSV body with a header row, as items: an empty cell is no tag."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError("invalid_body", "the CSV body is not valid UTF-8") from exc
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    items: list[dict[str, Any]] = []
    try:
        header = [name.strip() for name in next(rows, [])]
        if "caller_number" not in header and "call_uuid" not in header:
            raise ApiError("invalid_body", "the CSV header names no caller_number or call_uuid")
        if "" in header or len(set(header)) < len(header):
            raise ApiError("invalid_body", "the CSV header has an empty or repeated column")
        for row in rows:
            if not row:
                continue
            if len(row) != len(header):
                raise ApiError(
                    "invalid_body",
                    f"CSV line {rows.line_num} has {len(row)} cells, the header {len(header)}",
                )
            if len(items) == MAX_BULK_ITEMS:
                raise _too_many()
            items.append({name: cell for name, cell in zip(header, row, strict=True) if cell})
    except csv.Error as exc:
        raise ApiError("invalid_body", f"CSV line {rows.line_num}: {exc}") from exc
    return items


async def _bulk_request(
    svc: Services, req: Incoming, out: _Outcome
) -> tuple[KeyInfo, list[dict[str, Any]]]:
    """A bulk post's key, once it may post, and its items."""
    out.params = params = _query(req)
    secret = bulk_path_key(req.path) or params.get("key")
    key = None
    if secret:
        out.secret = secret
        out.key = key = await _recognise(svc, req, secret)
    body = await req.body(MAX_BULK_BODY_BYTES)
    key = _verified(svc, req, out, key, body)
    if set(params) - {"key"}:
        raise ApiError("invalid_query", "a bulk post's query takes only key")
    if _IDEMPOTENCY in req.headers:
        raise ApiError(
            "invalid_idempotency_key",
            f"a bulk post's items carry their own idempotency_key, not {IDEMPOTENCY_HEADER}",
        )
    content_type = (req.header(b"content-type") or "").split(";")[0].strip().lower()
    if content_type == _CSV:
        return key, _csv_items(body)
    if content_type == "application/json" or content_type.endswith("+json"):
        return key, _json_items(body)
    raise ApiError("unsupported_media_type", "post JSON items or text/csv")


def _bulk_item(key: KeyInfo, item: dict[str, Any], region: str) -> _Outcome:
    """A bulk post's item as a postback with its parameters read (or its failure)."""
    out = _Outcome(key)
    try:
        out.params = params = {
            name: value if type(value) is str else _text(name, value)
            for name, value in item.items()
        }
        _note_caller(out, params, region)
        if "key" in params:
            raise ApiError(
                "invalid_body", "a bulk item cannot name a key: the post's key is every item's"
            )
    except ApiError as exc:
        out.failure = exc
    return out


def _bulk_result(out: _Outcome) -> tuple[bytes, str]:
    """An item's result (its HTTP status and the body a single postback of it gets), and
    its outcome."""
    answer = out.answer
    if answer is None:
        assert isinstance(out.failure, ApiError)
        status, body, _ = error_answer(out.failure)
        return b'{"http_status":%d,%s' % (status, body[1:]), out.failure.code
    body = encode(answer)
    marked = b',"replayed":true}' if out.replayed else b"}"
    return b'{"http_status":200,%s%s' % (body[1:-1], marked), answer.status


async def _answer_bulk(svc: Services, req: Incoming) -> tuple[Answer, list[str]]:
    """Write the tags of many postbacks.

    What a bulk post gets, and the outcome of each item (of the post when it is refused
    as a whole)."""
    if svc.log.full:
        answer, outcome = _log_full(svc)
        return answer, [outcome]
    out = _Outcome()
    try:
        key, items = await _bulk_request(svc, req, out)
    except (ApiError, StoreUnavailable) as exc:
        out.failure = exc
        await _log_failures(svc, req, [out])
        assert isinstance(out.failure, ApiError)
        return error_answer(out.failure), [out.failure.code]
    region = svc.settings.default_region
    outs = [_bulk_item(key, item, region) for item in items]
    await _handle(svc, req, key, outs)
    done = [_bulk_result(out) for out in outs]
    body = b'{"results":[' + b",".join(result for result, _ in done) + b"]}"
    return (200, body, None), [outcome for _, outcome in done]


def _preflight(req: Incoming) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A browser's CORS preflight: allowed for any origin, GET and POST, any headers."""
    headers = list(_PREFLIGHT)
    requested = req.headers.get(_PREFLIGHT_HEADERS)
    if requested is not None:  # every header is allowed: the ones asked for are named
        headers.append((b"access-control-allow-headers", requested))
    failures = []
    if req.header(_PREFLIGHT_METHOD) not in ("GET", "POST", "OPTIONS"):
        failures.append("method")
    if _PREFLIGHT_PRIVATE in req.headers:
        failures.append("private-network")
    if failures:
        refused = ApiError("preflight_refused", "Disallowed CORS " + ", ".join(failures))
        status, body, _ = error_answer(refused)
        return status, body, [(b"content-type", b"application/json"), *headers]
    return 200, b"OK", [(b"content-type", b"text/plain; charset=utf-8"), *headers]


_TAGS_PARAMETER = {
    "name": "tags",
    "in": "query",
    "style": "form",
    "explode": True,
    "description": "every other parameter is a tag: name=value",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}


_IDEMPOTENCY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "description": "as the idempotency_key parameter (the two may not differ); a repeat's"
    f" answer carries {REPLAYED_HEADER}: true",
    "schema": {"type": "string", "pattern": f"^{models.IDEMPOTENCY_KEY}$"},
}


def _unroutable(path: str) -> ApiError:
    return ApiError("not_found", f"no route {path[:200]!r}: a key holds no slash")


ROUTES = Routes(Api.PUBLISHER)
_API = Api.PUBLISHER.value  # the metrics' label
for _path in (PATH, PATH + "/{key}"):
    for _method in ("GET", "POST"):
        ROUTES.route(
            _method, _path, query=PostbackParams, response=PostbackAnswer,
            body=PostbackParams if _method == "POST" else None,
            errors=tuple(code for code in LOGGED_CODES if code != "undecodable_entry"),
            doc={"description": DOC, "parameters": [_TAGS_PARAMETER, _IDEMPOTENCY_PARAMETER]},
        )(_answer)  # fmt: skip
_CSV_BODY = {"schema": {"type": "string", "description": "a header row, then one row an item"}}
for _path in (PATH + BULK, PATH + "/{key}" + BULK):
    ROUTES.route(
        "POST", _path, query=BulkParams, body=BulkBody, response=BulkAnswer,
        errors=tuple(code for code in LOGGED_CODES if code != "undecodable_entry"),
        doc={
            "description": BULK_DOC,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BulkBody"}},
                _CSV: _CSV_BODY,
            }},
        },
    )(_answer_bulk)  # fmt: skip


class PublisherApi:
    """The ASGI app of /data_writing, /data_writing/{key} and their /bulk."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.services: Services | None = None

    def bind(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Incoming(scope, receive)
        method = req.method
        route = PATH if req.path == PATH else PATH + "/{key}"
        cors = [_VARY, _ANY_ORIGIN, _EXPOSE] if _ORIGIN in req.headers else [_VARY]
        headers: dict[str, str] | None = None
        bulk = bulk_path_key(req.path)
        allow = _ALLOW if bulk is None else _ALLOW_BULK
        if bulk is not None:
            route = PATH + BULK if bulk == "" else PATH + "/{key}" + BULK
        if bulk is None and path_key(req.path) is None:
            status, body, headers = error_answer(_unroutable(req.path))
            route = UNMATCHED
        elif method == "POST" or (method == "GET" and bulk is None):
            (status, body, headers), outcomes = await self.answer(req, bulk is not None)
            for outcome in outcomes:
                self.metrics.outcome(outcome)
            self.metrics.postback_latency.observe(req.seconds())
        elif method == "OPTIONS" and _ORIGIN in req.headers and _PREFLIGHT_METHOD in req.headers:
            status, body, raw = _preflight(req)
            self.metrics.request(_API, route, method, status)
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})
            return
        elif method == "OPTIONS":
            status, body, headers = 204, b"", {"Allow": allow}
        else:
            refused = ApiError("method_not_allowed", f"{route} takes {allow}", {"Allow": allow})
            status, body, headers = error_answer(refused)
        self.metrics.request(_API, route, method, status)
        await send_json(send, status, body, headers, cors)

    async def answer(self, req: Incoming, bulk: bool = False) -> tuple[Answer, list[str]]:
        """What a GET or POST, or a bulk POST, gets (bugs included), and the outcome of
        each postback it carries."""
        svc = self.services
        assert svc is not None, "the publisher API answers once the front has started"
        try:
            if bulk:
                return await _answer_bulk(svc, req)
            answer, outcome = await _answer(svc, req)
            return answer, [outcome]
        except Exception:
            log.exception("%s %s failed", req.method, req.path[:64])
            internal = ApiError("internal_error")
            return error_answer(internal), [internal.code]


CONSOLE_AGENT = "calltags console (test a key)"  # the user agent its postbacks are logged with


async def try_key(
    svc: Services, key_id: int, params: dict[str, str], address: str | None
) -> tuple[int, bytes]:
    """One real postback through the key `key_id`, as the console's "Test a key" sends it:
    the same handler and log entry as any postback (signed, when the key wants it), but
    the key found by id, since its secret is nowhere to be had. (HTTP status, JSON body)
    as the publisher would get them."""
    key = await svc.publishers.key_info(key_id)
    if key is None:
        status, body, _ = error_answer(ApiError("key_not_found", f"no usable key {key_id}"))
        return status, body
    body = urlencode(params).encode()
    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"user-agent", CONSOLE_AGENT.encode()),
    ]
    if key.require_signature:
        stamp = str(int(time.time()))
        sign = signing.signature(key.signing_secret, stamp, "POST", PATH, "", body)
        headers += [(_TIMESTAMP, stamp.encode()), (_SIGNATURE, sign.encode())]
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http", "method": "POST", "path": PATH, "query_string": b"",
        "headers": headers, "client": (address, 0) if address else None,
    }  # fmt: skip
    (status, answer, _), _ = await _answer(svc, Incoming(scope, receive), key)
    return status, answer
