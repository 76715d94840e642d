"""The admin API of a caller's data (Bearer CALLTAGS_ADMIN_TOKEN), the number in the path
in any format: GET /admin/callers/{number} (pending tags and calls in Redis), DELETE
/admin/callers/{number}/pending (retract pending tags, optionally one publisher's) and
POST /admin/callers/{number}/erase (everywhere; see erasure.py). An erase is safe to
repeat: one that failed half-way (a store unavailable) is finished by the next."""

from __future__ import annotations

from starlette.requests import Request

from calltags import phone
from calltags.erasure import stream_redaction
from calltags.models import (
    CallerData,
    CallerQuery,
    Erasure,
    PendingTag,
    Retracted,
    call_model,
)
from calltags.operations import Api, Auth, Routes
from calltags.services import Services
from calltags.times import iso_ms

ROUTES = Routes(Api.ADMIN, Auth.ADMIN)
PATH = "/admin/callers/{number}"
_NUMBER = ("invalid_caller_number",)


def path_number(svc: Services, request: Request) -> str:
    """The caller of the path, E.164; ApiError 422 `invalid_caller_number`."""
    return phone.normalize(request.path_params["number"], svc.settings.default_region)


async def caller_data(svc: Services, number: str) -> CallerData:
    state = await svc.store.caller_state(number)
    expires = iso_ms(state.pending_expires_ms) if state.pending_expires_ms is not None else ""
    pending = [
        PendingTag(
            name=name,
            value=value,
            publisher_id=source.publisher_id,
            key_id=source.key_id,
            set_at=iso_ms(source.set_at_ms),
            expires_at=expires,
        )
        for name, (value, source) in sorted(state.pending.items())
    ]
    calls = [call_model(call) for call in state.calls]
    return CallerData(caller_number=number, pending=pending, calls=calls)


async def erase(svc: Services, number: str) -> Erasure:
    """Erase the caller everywhere: Redis, the log entries not yet in Postgres, Postgres."""
    pending, calls = await svc.store.erase_caller(number)
    entries = await svc.store.redact_streams(stream_redaction(number))
    return await svc.erasures.erase(number, pending, calls, entries)


@ROUTES.route("GET", PATH, errors=_NUMBER)
async def get_caller(svc: Services, request: Request) -> CallerData:
    """A caller's pending tags (value, publisher, key, set_at, expires_at) and calls in
    Redis."""
    return await caller_data(svc, path_number(svc, request))


@ROUTES.route("DELETE", PATH + "/pending", errors=_NUMBER)
async def retract_pending(svc: Services, request: Request, query: CallerQuery) -> Retracted:
    """Retract a caller's pending tags: all, or those of `publisher_id`."""
    number = path_number(svc, request)
    count = await svc.store.retract_pending(number, query.publisher_id)
    return Retracted(caller_number=number, retracted=count)


@ROUTES.route("POST", PATH + "/erase", errors=_NUMBER)
async def erase_caller(svc: Services, request: Request) -> Erasure:
    """Erase a caller everywhere: pending tags and calls in Redis, the caller's number and
    tag values in the postback log and call records (rows kept for counts); the erase is
    recorded with a salted hash of the number."""
    return await erase(svc, path_number(svc, request))
