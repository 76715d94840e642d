"""Every Redis key calltags uses, and the time units that go with them.

A caller's keys all carry the caller's E.164 number as hash tag, so that one Lua
script touches one Redis Cluster slot:

    {prefix}{+15551234567}:p     hash   pending tags: name -> "pub:key:set_at_ms|value"
    {prefix}{+15551234567}:c     hash   calls: call_uuid -> JSON call, plus the pointers
                                        "@live" (newest live call) and "@last" (newest ended call)
    {prefix}{+15551234567}:i:{KEY_ID}:{TOKEN}
                                 hash   an idempotent postback's first answer, for replays
                                        (TOKEN: the hash of its Idempotency-Key)
    {prefix}idem:{KEY_ID:TOKEN}  string the fingerprint of that postback's parameters, routed
                                        by the idempotency key so that any caller's post finds it
    {prefix}call:{CALL_UUID}     string caller number of a call, for lookups by call_uuid
    {prefix}key:{SHA256}         hash   mirror of a postback key for the hot path
    {prefix}rate:{KEY_ID}        hash   token bucket of a postback key's rate limit
    {prefix}fail:{ADDRESS}       string failed key attempts from a client address this minute
    {prefix}schema:{NAME}        string a tag schema's JSON (models.TagSchema), mirrored from
                                        Postgres for the hot path
    {prefix}keys:synced          string set once every key is mirrored: unknown keys then
                                        need no Postgres lookup
    {prefix}log:{N}              stream postback log shard N (0 <= N < CALLTAGS_LOG_SHARDS)
    {prefix}calllog:{N}          stream call snapshots shard N, written after connect and end
                                        (postbacks carry theirs in the log entry)

Workers read both stream families through the consumer group SINK_GROUP. The arq jobs
sending webhook deliveries are named, one an attempt (arq keeps its own keys for them):

    {prefix}webhook:{DELIVERY_ID}:{ATTEMPT}   job id of a delivery's attempt (0: the first)
"""

from __future__ import annotations

from dataclasses import dataclass

SECOND_MS = 1000  # 1 s in ms
SINK_GROUP = "calltags-sink"  # consumer group of the workers on every log stream


@dataclass(frozen=True)
class KeySpace:
    prefix: str
    log_shards: int

    def pending(self, caller: str) -> str:
        return f"{self.prefix}{{{caller}}}:p"

    def calls(self, caller: str) -> str:
        return f"{self.prefix}{{{caller}}}:c"

    def replay(self, caller: str, key_id: int, token: str) -> str:
        return f"{self.prefix}{{{caller}}}:i:{key_id}:{token}"

    def replays(self, caller: str) -> str:
        """The set of the caller's `replay` records' names (for an erase)."""
        return f"{self.prefix}{{{caller}}}:is"

    def idempotency(self, key_id: int, token: str) -> str:
        return f"{self.prefix}idem:{{{key_id}:{token}}}"

    def call_index(self, call_uuid: str) -> str:
        return f"{self.prefix}call:{{{call_uuid}}}"

    def postback_key(self, secret_hash: str) -> str:
        return f"{self.prefix}key:{{{secret_hash}}}"

    def rate_bucket(self, key_id: int) -> str:
        return f"{self.prefix}rate:{{{key_id}}}"

    def failures(self, address: str) -> str:
        return f"{self.prefix}fail:{{{address}}}"

    def tag_schema(self, name: str) -> str:
        return f"{self.prefix}schema:{{{name}}}"

    def mirror_complete(self) -> str:
        return f"{self.prefix}keys:synced"

    def log_shard(self, shard: int) -> str:
        return f"{self.prefix}log:{{{shard}}}"

    def log_shards_all(self) -> list[str]:
        return [self.log_shard(n) for n in range(self.log_shards)]

    def call_log_shard(self, shard: int) -> str:
        return f"{self.prefix}calllog:{{{shard}}}"

    def call_log_shards_all(self) -> list[str]:
        return [self.call_log_shard(n) for n in range(self.log_shards)]

    def delivery_job(self, delivery_id: str, attempt: int) -> str:
        return f"{self.prefix}webhook:{delivery_id}:{attempt}"
