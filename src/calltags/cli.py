"""The `calltags` command: run, migrate, and manage publishers and keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from calltags.config import Settings, load_settings, require
from calltags.errors import ConfigError, StoreUnavailable

RUN_ENV = "run.env"  # written by `calltags run` in the data folder, read by the other commands


def load_run_env(data_dir: Path) -> None:
    """Fill unset variables from what a running `calltags run` wrote, so a second
    terminal reaches the same embedded servers."""
    path = data_dir / RUN_ENV
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name and not os.environ.get(name):
            os.environ[name] = value


def _settings() -> Settings:
    settings = load_settings()
    load_run_env(settings.data_dir)
    return load_settings()


def _print_json(value: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _with_publishers(settings: Settings, action: Callable[[Any], Awaitable[None]]) -> None:
    from calltags.app import close_services, open_services

    svc = await open_services(settings)
    try:
        await action(svc.publishers)
    finally:
        await close_services(svc)


def _base_url(settings: Settings) -> str:
    return os.environ.get("CALLTAGS_PUBLIC_URL", f"http://localhost:{settings.port}").rstrip("/")


def cmd_migrate(args: argparse.Namespace) -> None:
    from calltags import db

    settings = _settings()
    applied = asyncio.run(db.migrate(require(settings.database_url, "DATABASE_URL")))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))

    async def sync(publishers: Any) -> None:
        count = await publishers.sync_mirror()
        print(f"mirrored {count} key(s) into Redis")

    if settings.redis_url:
        asyncio.run(_with_publishers(settings, sync))


def cmd_publisher_create(args: argparse.Namespace) -> None:
    async def action(publishers: Any) -> None:
        publisher = await publishers.create_publisher(args.name)
        _print_json(publisher)
        print(f"\nnext: calltags key create --publisher {publisher['id']} --name 'main'")

    asyncio.run(_with_publishers(_settings(), action))


def cmd_publisher_list(args: argparse.Namespace) -> None:
    async def action(publishers: Any) -> None:
        _print_json(await publishers.list_publishers())

    asyncio.run(_with_publishers(_settings(), action))


def cmd_key_create(args: argparse.Namespace) -> None:
    settings = _settings()

    async def action(publishers: Any) -> None:
        from calltags.publishers import PublisherNotFound

        try:
            key, secret = await publishers.create_key(
                args.publisher, args.name, "call_data_writing", args.cutoff, args.storage
            )
        except PublisherNotFound:
            raise SystemExit(f"no publisher with id {args.publisher}") from None
        _print_json(key)
        _print_secret(settings, secret)
        print(f"signing secret for signed postbacks (shown once): {key['signing_secret']}")

    asyncio.run(_with_publishers(settings, action))


def _print_secret(settings: Settings, secret: str) -> None:
    url = (
        f"{_base_url(settings)}/data_writing?key={quote(secret)}"
        "&caller_number=%2B15551234567&prequalified=true"
    )
    print(f"\nkey (shown once, store it now): {secret}")
    print(f"example postback:\n  curl '{url}'")


def cmd_key_rotate(args: argparse.Namespace) -> None:
    settings = _settings()

    async def action(publishers: Any) -> None:
        from calltags.publishers import KeyNotFound

        try:
            key, secret = await publishers.rotate_key(args.key_id, args.grace)
        except KeyNotFound:
            raise SystemExit(f"no usable key with id {args.key_id}") from None
        _print_json(key)
        _print_secret(settings, secret)
        print(f"the previous key works until {key['previous_key_valid_until'] or 'now'}")

    asyncio.run(_with_publishers(settings, action))


def cmd_key_list(args: argparse.Namespace) -> None:
    async def action(publishers: Any) -> None:
        from calltags.publishers import PublisherNotFound

        try:
            keys = await publishers.list_keys(args.publisher)
        except PublisherNotFound:
            raise SystemExit(f"no publisher with id {args.publisher}") from None
        for key in keys:
            state = "revoked" if key["revoked"] else "paused" if key["paused"] else "active"
            print(
                f"{key['id']:>6}  {state:<8} {key['key_prefix']}...  {key['name']}"
                f"  cutoff={key['end_call_cutoff_seconds']}s"
                f" storage={key['storage_duration_seconds']}s"
                f" last_used={key['last_used_at'] or '-'}"
            )
        if not keys:
            print("no keys")

    asyncio.run(_with_publishers(_settings(), action))


def _key_change(changes: dict[str, Any] | None) -> Callable[[argparse.Namespace], None]:
    def command(args: argparse.Namespace) -> None:
        async def action(publishers: Any) -> None:
            from calltags.publishers import KeyNotFound

            try:
                if changes is None:
                    key = await publishers.revoke_key(args.key_id)
                else:
                    key = await publishers.update_key(args.key_id, changes)
            except KeyNotFound:
                raise SystemExit(f"no usable key with id {args.key_id}") from None
            _print_json(key)

        asyncio.run(_with_publishers(_settings(), action))

    return command


def cmd_run(args: argparse.Namespace) -> None:
    from calltags import devserver

    devserver.run(load_settings())


def _ranged(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="calltags", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "run", help="run web (and worker), with embedded stores when unset"
    ).set_defaults(func=cmd_run)
    sub.add_parser("migrate", help="apply database migrations, mirror keys").set_defaults(
        func=cmd_migrate
    )

    publisher = sub.add_parser("publisher", help="manage publishers").add_subparsers(
        dest="action", required=True
    )
    create = publisher.add_parser("create", help="create a publisher")
    create.add_argument("name")
    create.set_defaults(func=cmd_publisher_create)
    publisher.add_parser("list", help="list publishers").set_defaults(func=cmd_publisher_list)

    key = sub.add_parser("key", help="manage postback keys").add_subparsers(
        dest="action", required=True
    )
    kcreate = key.add_parser("create", help="create a key; prints the secret once")
    kcreate.add_argument("--publisher", type=int, required=True)
    kcreate.add_argument("--name", required=True)
    kcreate.add_argument(
        "--cutoff", type=_ranged(0, 2_592_000), default=3600, help="end-call cut-off, s"
    )
    kcreate.add_argument(
        "--storage", type=_ranged(60, 2_592_000), default=86400, help="storage duration, s"
    )
    kcreate.set_defaults(func=cmd_key_create)
    klist = key.add_parser("list", help="list a publisher's keys")
    klist.add_argument("--publisher", type=int, required=True)
    klist.set_defaults(func=cmd_key_list)
    rotate = key.add_parser("rotate", help="new secret; the old one works for a grace period")
    rotate.add_argument("key_id", type=int)
    rotate.add_argument(
        "--grace", type=_ranged(0, 2_592_000), default=86400, help="seconds the old key works"
    )
    rotate.set_defaults(func=cmd_key_rotate)
    for name, changes, text in (
        ("pause", {"paused": True}, "pause a key"),
        ("resume", {"paused": False}, "resume a paused key"),
        ("revoke", None, "revoke a key for good"),
    ):
        action = key.add_parser(name, help=text)
        action.add_argument("key_id", type=int)
        action.set_defaults(func=_key_change(changes))
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, StoreUnavailable) as exc:
        raise SystemExit(f"calltags: {exc}") from exc
