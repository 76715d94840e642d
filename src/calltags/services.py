"""The clients a running app holds, opened in its lifespan and shared by the routes."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from calltags.config import Settings
from calltags.keys import KeySpace
from calltags.log import PostbackLog
from calltags.publishers import GuessGuard, KeyResolver, Publishers
from calltags.store import RedisClient, Store


@dataclass
class Services:
    settings: Settings
    redis: RedisClient
    pool: asyncpg.Pool
    keys: KeySpace
    store: Store
    log: PostbackLog
    publishers: Publishers
    resolver: KeyResolver
    guard: GuessGuard


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
