"""The `calltags` command: run, migrate, and manage publishers, keys and webhooks."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from msgspec import Struct

from calltags.config import Settings, load_settings, require
from calltags.errors import ConfigError, StoreUnavailable
from calltags.models import DEFAULT_CUTOFF_SECONDS, DEFAULT_GRACE_SECONDS, DEFAULT_STORAGE_SECONDS

if TYPE_CHECKING:
    from calltags.publishers import Publishers

T = TypeVar("T", bound=Struct)

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
    import msgspec
    import orjson

    text = orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(text + "\n")


def _valid(values: dict[str, Any], model: type[T]) -> T:
    """The arguments as `model` (the API's own rules), or a message naming the field."""
    from calltags.errors import ApiError
    from calltags.models import convert

    try:
        return convert(values, model)
    except ApiError as exc:
        raise SystemExit(f"calltags: {exc.message}") from None


async def _with_publishers(
    settings: Settings, action: Callable[[Publishers], Awaitable[None]]
) -> None:
    from calltags.services import open_services

    svc = await open_services(settings)
    try:
        await action(svc.publishers)
    finally:
        await svc.close()


def cmd_migrate(args: argparse.Namespace) -> None:
    from calltags import db

    settings = _settings()
    applied = asyncio.run(db.migrate(require(settings.database_url, "DATABASE_URL")))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))

    async def sync(publishers: Publishers) -> None:
        count = await publishers.sync_mirror()
        print(f"mirrored {count} key(s) into Redis")

    if settings.redis_url:
        asyncio.run(_with_publishers(settings, sync))


def cmd_publisher_create(args: argparse.Namespace) -> None:
    from calltags.models import PublisherCreate

    new = _valid({"name": args.name}, PublisherCreate)

    async def action(publishers: Publishers) -> None:
        publisher = await publishers.create_publisher(new.name)
        _print_json(publisher)
        print(f"\nnext: calltags key create --publisher {publisher.id} --name 'main'")

    asyncio.run(_with_publishers(_settings(), action))


def cmd_publisher_list(args: argparse.Namespace) -> None:
    async def action(publishers: Publishers) -> None:
        _print_json(await publishers.list_publishers())

    asyncio.run(_with_publishers(_settings(), action))


def cmd_key_create(args: argparse.Namespace) -> None:
    from calltags.models import KeyCreate

    settings = _settings()
    fields = {"name": args.name, "end_call_cutoff_seconds": args.cutoff}
    fields["storage_duration_seconds"] = args.storage
    new = _valid({k: v for k, v in fields.items() if v is not None}, KeyCreate)

    async def action(publishers: Publishers) -> None:
        from calltags.publishers import PublisherNotFound

        try:
            key, secret, signing_secret = await publishers.create_key(args.publisher, new)
        except PublisherNotFound:
            raise SystemExit(f"no publisher with id {args.publisher}") from None
        _print_json(key)
        _print_secret(settings, secret)
        print(f"signing secret for signed postbacks (shown once): {signing_secret}")

    asyncio.run(_with_publishers(settings, action))


def _print_secret(settings: Settings, secret: str) -> None:
    from calltags.publishers import example_url

    base = settings.public_url or f"http://localhost:{settings.port}"
    print(f"\nkey (shown once, store it now): {secret}")
    print(f"example postback:\n  curl '{example_url(base, secret)}'")


def cmd_key_rotate(args: argparse.Namespace) -> None:
    from calltags.models import KeyRotate

    settings = _settings()
    rotation = _valid({} if args.grace is None else {"grace_seconds": args.grace}, KeyRotate)

    async def action(publishers: Publishers) -> None:
        from calltags.publishers import KeyNotFound

        try:
            key, secret = await publishers.rotate_key(args.key_id, rotation.grace_seconds)
        except KeyNotFound:
            raise SystemExit(f"no usable key with id {args.key_id}") from None
        _print_json(key)
        _print_secret(settings, secret)
        print(f"the previous key works until {key.previous_key_valid_until or 'now'}")

    asyncio.run(_with_publishers(settings, action))


def cmd_key_list(args: argparse.Namespace) -> None:
    async def action(publishers: Publishers) -> None:
        from calltags.publishers import PublisherNotFound

        try:
            keys = await publishers.list_keys(args.publisher)
        except PublisherNotFound:
            raise SystemExit(f"no publisher with id {args.publisher}") from None
        for key in keys:
            state = "revoked" if key.revoked else "paused" if key.paused else "active"
            print(
                f"{key.id:>6}  {state:<8} {key.key_prefix}...  {key.name}"
                f"  cutoff={key.end_call_cutoff_seconds}s"
                f" storage={key.storage_duration_seconds}s"
                f" last_used={key.last_used_at or '-'}"
            )
        if not keys:
            print("no keys")

    asyncio.run(_with_publishers(_settings(), action))


def _key_change(paused: bool | None) -> Callable[[argparse.Namespace], None]:
    """pause (True), resume (False) or revoke (None)."""

    def command(args: argparse.Namespace) -> None:
        from calltags.models import KeyUpdate

        async def action(publishers: Publishers) -> None:
            from calltags.publishers import KeyNotFound

            try:
                if paused is None:
                    key = await publishers.revoke_key(args.key_id)
                else:
                    key = await publishers.update_key(args.key_id, KeyUpdate(paused=paused))
            except KeyNotFound:
                raise SystemExit(f"no usable key with id {args.key_id}") from None
            _print_json(key)

        asyncio.run(_with_publishers(_settings(), action))

    return command


async def _with_webhooks(settings: Settings, action: Callable[[Any], Awaitable[None]]) -> None:
    """Run `action` with the webhooks' store (WebhookNotFound: a message naming the id)."""
    from calltags.services import open_services
    from calltags.webhookstore import WebhookNotFound, WebhookStore

    svc = await open_services(settings)
    try:
        await action(WebhookStore(svc.pool))
    except WebhookNotFound as exc:
        raise SystemExit(f"no webhook with id {exc.args[0]}") from None
    finally:
        await svc.close()


def cmd_webhook_create(args: argparse.Namespace) -> None:
    from calltags.webhooks import WebhookCreate, tag_filter

    fields: dict[str, Any] = {"name": args.name, "url": args.url, "events": args.event}
    fields["method"] = args.method
    if args.publisher is not None:
        fields["publisher_id"] = args.publisher
    if args.campaign is not None:
        fields["campaign"] = args.campaign
    fields["tag_filters"] = [tag_filter(text) for text in args.tag or []]
    new = _valid(fields, WebhookCreate)

    async def action(store: Any) -> None:
        webhook = await store.create(new)
        _print_json(webhook)
        print(f"\nsigning secret (shown once, store it now): {webhook.secret}")

    asyncio.run(_with_webhooks(_settings(), action))


def cmd_webhook_list(args: argparse.Namespace) -> None:
    async def action(store: Any) -> None:
        found = await store.all()
        for hook in found:
            state = "enabled" if hook.enabled else "disabled"
            print(f"{hook.id:>6}  {state:<8} {hook.method:<4} {hook.url}  {','.join(hook.events)}")
            if hook.disabled_reason:
                print(f"        {hook.disabled_reason}")
        if not found:
            print("no webhooks")

    asyncio.run(_with_webhooks(_settings(), action))


def cmd_webhook_test(args: argparse.Namespace) -> None:
    settings = _settings()

    async def action(store: Any) -> None:
        from calltags.delivery import send_test

        result = await send_test(store, settings, args.webhook_id)
        _print_json(result)
        if not result.delivered:
            raise SystemExit(1)

    asyncio.run(_with_webhooks(settings, action))


def cmd_webhook_disable(args: argparse.Namespace) -> None:
    async def action(store: Any) -> None:
        from calltags.webhooks import WebhookUpdate

        _print_json(await store.update(args.webhook_id, WebhookUpdate(enabled=False)))

    asyncio.run(_with_webhooks(_settings(), action))


def cmd_run(args: argparse.Namespace) -> None:
    from calltags import devserver

    devserver.run(load_settings())


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
        "--cutoff", type=int, help=f"end-call cut-off, s (default {DEFAULT_CUTOFF_SECONDS})"
    )
    kcreate.add_argument(
        "--storage", type=int, help=f"storage duration, s (default {DEFAULT_STORAGE_SECONDS})"
    )
    kcreate.set_defaults(func=cmd_key_create)
    klist = key.add_parser("list", help="list a publisher's keys")
    klist.add_argument("--publisher", type=int, required=True)
    klist.set_defaults(func=cmd_key_list)
    rotate = key.add_parser("rotate", help="new secret; the old one works for a grace period")
    rotate.add_argument("key_id", type=int)
    rotate.add_argument(
        "--grace", type=int, help=f"seconds the old key works (default {DEFAULT_GRACE_SECONDS})"
    )
    rotate.set_defaults(func=cmd_key_rotate)
    for name, paused, text in (
        ("pause", True, "pause a key"),
        ("resume", False, "resume a paused key"),
        ("revoke", None, "revoke a key for good"),
    ):
        action = key.add_parser(name, help=text)
        action.add_argument("key_id", type=int)
        action.set_defaults(func=_key_change(paused))

    webhook = sub.add_parser("webhook", help="manage outbound webhooks").add_subparsers(
        dest="action", required=True
    )
    wcreate = webhook.add_parser("create", help="create a webhook; prints its secret once")
    wcreate.add_argument("--name", required=True)
    wcreate.add_argument("--url", required=True, help="URL template, e.g. https://x/?c=[call_uuid]")
    wcreate.add_argument(
        "--event", action="append", required=True, help="an event to send (repeat for more)"
    )
    wcreate.add_argument("--method", choices=("POST", "GET"), default="POST")
    wcreate.add_argument("--publisher", type=int, help="only calls of this publisher")
    wcreate.add_argument("--campaign", help="only calls of this campaign")
    wcreate.add_argument(
        "--tag", action="append", help="tag filter: NAME, NAME=VALUE or NAME=A|B (repeatable)"
    )
    wcreate.set_defaults(func=cmd_webhook_create)
    webhook.add_parser("list", help="list webhooks").set_defaults(func=cmd_webhook_list)
    for name, command, text in (
        ("test", cmd_webhook_test, "send a webhook.test event now"),
        ("disable", cmd_webhook_disable, "disable a webhook"),
    ):
        wh_action = webhook.add_parser(name, help=text)
        wh_action.add_argument("webhook_id", type=int)
        wh_action.set_defaults(func=command)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, StoreUnavailable) as exc:
        raise SystemExit(f"calltags: {exc}") from exc
