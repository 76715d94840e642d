"""Auto-pipelining: commands issued in one event-loop turn go to Redis as one pipeline.

Under load many requests wait on Redis at once; sending their commands together costs
one round trip and one connection checkout for all of them instead of one each. Every
command keeps its own meaning (a Lua script still runs atomically on its own); only the
transport is shared. Scripts are called by SHA and loaded again if Redis lost them.

A batch is packed by hiredis (C) and written on one of redis-py's pooled connections,
whose parser (hiredis too) reads the replies: redis-py's own Pipeline packs in Python,
which cost more than a quarter of a postback's time in redis-py.

`ReplicaAckedPipeline` (CALLTAGS_WRITE_ACK=replica) ends every batch that writes with
one WAIT on the same connection, so the replicas' confirmation costs one command per
batch, not per request; the base class sends no WAIT.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError

_Pending = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]

# The commands the stores send that write nothing: a batch of only these needs no WAIT,
# and their replies stand whatever WAIT says.
READ_COMMANDS = frozenset(("GET", "HGET", "HMGET", "HGETALL", "EXISTS", "PTTL", "XLEN", "XRANGE"))


@dataclass(frozen=True)
class ReplicaAck:
    """CALLTAGS_WRITE_ACK=replica: a write is answered once `replicas` replicas hold it,
    asked by one `WAIT replicas timeout_ms`."""

    replicas: int
    timeout_ms: int

    def wait(self) -> tuple[str, int, int]:
        return ("WAIT", self.replicas, self.timeout_ms)

    def judge(self, reply: Any, held: Any) -> Any:
        """`reply` if WAIT's answer `held` counts enough replicas, else Unconfirmed."""
        if isinstance(held, int) and held >= self.replicas:
            return reply
        return Unconfirmed(reply, held if isinstance(held, int) else 0, self.replicas)


class Unconfirmed(RedisError):  # type: ignore[misc]  # redis-py's exceptions are untyped
    """A write the primary did, but fewer replicas than asked confirmed in time (WAIT):
    a failover may lose it. `reply` is the command's own reply."""

    def __init__(self, reply: Any, replicas: int, wanted: int):
        super().__init__(f"{replicas} of {wanted} replicas confirmed the write in time")
        self.reply = reply
        self.replicas = replicas
        self.wanted = wanted


class AutoPipeline:
    def __init__(self, redis: Redis, scripts: list[AsyncScript]):
        self._redis = redis
        self._scripts = scripts
        self._pending: _Pending = []
        self._tasks: set[asyncio.Task[None]] = set()

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; its reply (or error) arrives through the future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, future))
        return future

    def evalsha(self, script: AsyncScript, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Pending) -> None:
        try:
            replies = await self._send([args for args, _ in batch])
            missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # A restarted or flushed Redis forgot the scripts: load them, run those again.
                for script in self._scripts:
                    await self._redis.script_load(script.script)
                again = await self._send([batch[n][0] for n in missing])
                for n, reply in zip(missing, again, strict=True):
                    replies[n] = reply
        except Exception as exc:  # every waiting request gets it; none waits forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, RedisError | OSError):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the request went away meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies, in order; a command's error is its reply, as an exception."""
        try:
            packed = b"".join([hiredis.pack_command(args) for args in commands])
        except TypeError as exc:
            raise DataError(str(exc)) from exc
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            # A reply may be half read: the connection cannot be trusted with another.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return replies


class ReplicaAckedPipeline(AutoPipeline):
    """An AutoPipeline whose batches that write end in `WAIT replicas timeout_ms` on the
    batch's own connection (WAIT counts the replicas that hold that connection's writes).
    With fewer replicas than asked, each write of the batch fails with Unconfirmed; reads
    keep their replies."""

    def __init__(self, redis: Redis, scripts: list[AsyncScript], ack: ReplicaAck):
        super().__init__(redis, scripts)
        self.ack = ack
        self._wait = ack.wait()

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        writes = [n for n, args in enumerate(commands) if args[0] not in READ_COMMANDS]
        if not writes:
            return await super()._send(commands)
        replies = await super()._send([*commands, self._wait])
        held = replies.pop()  # an error (say, WAIT on a replica) confirms nothing
        for n in writes:
            if not isinstance(replies[n], Exception):  # a refused write wrote nothing
                replies[n] = self.ack.judge(replies[n], held)
        return replies
