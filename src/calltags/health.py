"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from calltags.http import JSONResponse
from calltags.services import services
from calltags.store import REDIS_ERRORS

_CHECK_TIMEOUT = 2.0  # s a readiness probe waits for each store


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(svc.redis.ping(), _CHECK_TIMEOUT)
        checks["redis"] = "ok"
    except (*REDIS_ERRORS, OSError, TimeoutError) as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(svc.pool.fetchval("SELECT 1"), _CHECK_TIMEOUT)
        checks["postgres"] = "ok"
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    # The backlog does not make the process unready: every web process shares it, and
    # routing must go on while postbacks are refused.
    backlog = svc.log.last
    log = {
        "backlog": backlog.total,
        "backlog_postbacks": backlog.postbacks,
        "backlog_calls": backlog.calls,
        "oldest_entry_age_seconds": round(backlog.oldest_age_seconds(), 3),
        "max_backlog": svc.log.max_backlog,
        "accepting": not svc.log.full,
    }
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks, "log": log},
        status_code=200 if ready else 503,
    )
