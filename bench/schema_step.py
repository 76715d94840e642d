"""The postback's tag schema step on its own, in process: µs a postback.

The step is tagschemas.TagSchemas.rules (once a batch) and the function it gives applied:
µs a call for a key without a schema and for one whose schema declares the postback's
four tags, the schema read once from its mirror (fakeredis) into the process's cache, as
it is on the hot path between two reads of the mirror.

    .venv/bin/python -m bench.schema_step [--calls 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import fakeredis
import msgspec

from calltags.keycache import KeyInfo
from calltags.keys import KeySpace
from calltags.models import TagRule, TagSchema
from calltags.tagschemas import TagSchemas

SCHEMA = TagSchema(
    tags={
        "age": TagRule(type="integer", min=18),
        "tier": TagRule(type="enum", values=["Gold", "Silver"]),
        "prequalified": TagRule(type="boolean"),
        "zip": TagRule(type="string", pattern="[0-9]{5}"),
    }
)
TAGS = {"age": "042", "tier": "gold", "prequalified": "yes", "zip": "10001"}


async def _per_call(schemas: TagSchemas, key: KeyInfo, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        conform = schemas.known(key) or await schemas.rules(key)  # as postbacks._handle, a post
        conform(TAGS)
    return (time.perf_counter() - started) / calls * 1e6


async def main(calls: int, rounds: int) -> None:
    keys = KeySpace("bench:", 1)
    redis = fakeredis.FakeAsyncRedis()
    await redis.set(keys.tag_schema("leads"), msgspec.json.encode(SCHEMA))
    schemas = TagSchemas(None, redis, keys, 3600.0, "US")  # type: ignore[arg-type]  # no Postgres
    assert await schemas.current("leads") == SCHEMA
    plain = KeyInfo(1, 1, 3600, 86400, False)
    typed = KeyInfo(1, 1, 3600, 86400, False, tag_schema="leads")
    for _ in range(rounds):
        without = await _per_call(schemas, plain, calls)
        with_schema = await _per_call(schemas, typed, calls)
        print(f"no schema {without:.2f} µs a postback, 4-tag schema {with_schema:.2f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
