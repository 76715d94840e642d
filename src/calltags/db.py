"""Postgres: the connection pool and the migrations."""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from calltags.errors import StoreUnavailable

log = logging.getLogger("calltags.db")

# Held while migrating, so that concurrent release phases apply each migration once.
_MIGRATION_LOCK = 0x63616C6C74616773  # "calltags"


# What asyncpg raises when Postgres cannot be reached or cannot serve (not for a query's
# own fault, which is a bug to see, not an outage).
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
CONNECT_TIMEOUT = 5.0  # s to open a connection: an outage is answered 503 within it
COMMAND_TIMEOUT = 30.0  # s a web process's statement may take


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
        )
    except (*POSTGRES_ERRORS, asyncpg.PostgresError) as exc:  # type: ignore[misc]
        raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("calltags").joinpath("migrations")
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name, folder.joinpath(name).read_text(encoding="utf-8")) for name in files]


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied, in order; the names applied."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in _migrations():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied


def with_database(url: str, name: str) -> str:
    """The same server URL, naming database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(server_url: str, name: str, *, if_missing: bool = False) -> None:
    conn: asyncpg.Connection = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not (exists and if_missing):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(server_url: str, name: str) -> None:
    conn: asyncpg.Connection = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
