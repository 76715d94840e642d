"""The Lua scripts of lua/, each read once from the package, and registered on a client.

A script may hold `-- @include FILE` lines: each is replaced by the text of FILE (a
helper shared by several scripts, such as take_token.lua), so that Redis, which has no
include of its own, gets one self-contained script.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

_INCLUDE = re.compile(r"^-- @include (\S+)$", re.M)


@functools.cache
def source(name: str) -> str:
    """The text of lua/`name`, includes replaced."""
    folder = resources.files("calltags").joinpath("lua")
    text = folder.joinpath(name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: folder.joinpath(m.group(1)).read_text(encoding="utf-8"), text)


def register(redis: Redis | RedisCluster, name: str) -> AsyncScript:
    """lua/`name` as a script object of `redis` (called by SHA, loaded again on NOSCRIPT)."""
    script: AsyncScript = redis.register_script(source(name))
    return script
