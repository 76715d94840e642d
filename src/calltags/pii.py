"""Personal data on the console's pages: the tags a key's tag schema marks `pii` are
shown masked on the log, call and caller pages until an admin reveals them (a POST of
the page's own form, carrying the session's CSRF token, logged). A tag is judged by the
schema its key names now."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from calltags.models import Key
from calltags.services import Services

log = logging.getLogger("calltags")

MASK = "••••••"  # what a personal tag's value shows until revealed
Personal = dict[int, frozenset[str]]  # key id -> the names of its personal tags


async def personal_tags(svc: Services, keys: Iterable[Key]) -> Personal:
    """For each key naming a tag schema, the tags that schema marks personal."""
    found: Personal = {}
    for key in keys:
        if key.tag_schema is None:
            continue
        schema = await svc.tag_schemas.current(key.tag_schema)
        if schema is not None:
            names = frozenset(name for name, rule in schema.tags.items() if rule.pii)
            if names:
                found[key.id] = names
    return found


def masked(tags: dict[str, str], names: frozenset[str]) -> dict[str, str]:
    """`tags` with the values of `names` masked."""
    return {name: MASK if name in names else value for name, value in tags.items()}


def revealed(path: str) -> None:
    log.info("personal tag values revealed on %s", path[:200])
