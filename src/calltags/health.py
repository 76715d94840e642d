"""Liveness (/healthz, served by the front in every process) and readiness (/readyz)."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request

from calltags.db import POSTGRES_ERRORS
from calltags.models import Health, LogBacklog, Readiness
from calltags.operations import Api, Routes
from calltags.services import Services
from calltags.store import REDIS_ERRORS

_CHECK_TIMEOUT = 2.0  # s a readiness probe waits for each store
HEALTHY = msgspec.json.encode(Health(status="ok"))
FRONT = Routes(Api.FRONT)
ROUTES = Routes(Api.ADMIN)


@FRONT.route("GET", "/healthz", response=Health)
async def healthz() -> bytes:
    """Liveness: the process answers (nothing else is asked)."""
    return HEALTHY


@ROUTES.route("GET", "/readyz", also={503: Readiness})
async def readyz(svc: Services, request: Request) -> tuple[int, Readiness]:
    """Readiness: Redis and Postgres reachable (and the log's backlog)."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(svc.redis.ping(), _CHECK_TIMEOUT)
        checks["redis"] = "ok"
    except (*REDIS_ERRORS, OSError, TimeoutError) as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(svc.pool.fetchval("SELECT 1"), _CHECK_TIMEOUT)
        checks["postgres"] = "ok"
    except POSTGRES_ERRORS as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    # The backlog does not make the process unready: every web process shares it, and
    # routing must go on while postbacks are refused.
    backlog = svc.log.last
    body = Readiness(
        status="ready" if ready else "unavailable",
        checks=checks,
        log=LogBacklog(
            backlog=backlog.total,
            backlog_postbacks=backlog.postbacks,
            backlog_calls=backlog.calls,
            oldest_entry_age_seconds=round(backlog.oldest_age_seconds(), 3),
            max_backlog=svc.log.max_backlog,
            accepting=not svc.log.full,
        ),
    )
    return 200 if ready else 503, body
