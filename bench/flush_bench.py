"""Flush throughput and lag of ONE worker process (`arq workers.flush.WorkerSettings`).

1. Throughput: pre-fills N postback log entries in Redis, starts one worker and times
   it draining them into Postgres (from the moment it takes its first entries to an
   empty backlog, so every row's whole path is inside the window), then prints rows/s,
   and the CPU seconds the worker, its Postgres backends and Redis spent in that window
   (when they run on this machine).
2. Lag at steady load: appends entries at a fixed rate while that worker runs, samples
   the age of the oldest entry waiting in Redis (what /metrics exports as
   calltags_log_oldest_entry_age_seconds) and prints its median, p95 and maximum.

Redis and Postgres come from REDIS_URL / DATABASE_URL when set, embedded servers
otherwise; the bench uses a database and key prefix of its own and removes them.

    .venv/bin/python -m bench.flush_bench [--entries 200000] [--rate 2000] [--seconds 20]
        [--batch N] [--profile bench/results/flush.speedscope.json]

`bench.run` calls `measure_flush` for `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from redis.asyncio import Redis

from calltags import db
from calltags.devstores import embedded_postgres, embedded_valkey
from calltags.keys import KeySpace
from calltags.log import ENTRY_FIELD, PostbackLog, make_entry
from calltags.store import OUTCOME_FIELD, STATUS_STORED
from calltags.times import now_ms

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHUNK = 5000  # entries a pipeline appends
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/*/stat unit


def entry(n: int) -> dict[str, Any]:
    """A typical entry: 4 in 5 accepted with three tags, 1 in 5 rejected. An accepted
    one has no status yet: the web process appends it within the write script, which
    adds the outcome (field r, see `fields`)."""
    rejected = n % 5 == 4
    caller = f"+1212{n % 10_000_000:07d}"
    return make_entry(
        received_ms=now_ms(),
        method="GET",
        publisher_id=None if rejected else 1 + n % 7,
        key_id=None if rejected else 1 + n % 13,
        key_prefix="ct_abcde" if rejected else None,
        caller_raw=caller[2:],
        caller_number=caller,
        call_uuid=None,
        tags={"prequalified": "true", "source": f"form-{n % 50}", "zip": f"{n % 100000:05d}"},
        status=None,
        error="invalid_key" if rejected else None,
        http_status=401 if rejected else 200,
        remote_addr=f"198.51.100.{n % 250}",
        user_agent="Mozilla/5.0 (bench)",
        latency_us=350 + n % 200,
    )


def fields(n: int) -> dict[bytes, bytes]:
    """Entry n's stream fields as the web process writes them: accepted, with the write
    script's outcome (0: call not found, tags stored); rejected, without."""
    found = {ENTRY_FIELD: orjson.dumps(entry(n))}
    if n % 5 != 4:
        found[OUTCOME_FIELD] = b"0"
    return found


async def append(redis: Redis, keys: KeySpace, first: int, count: int) -> None:
    shards = keys.log_shards_all()
    for start in range(first, first + count, CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + CHUNK, first + count)):
                pipe.xadd(shards[n % len(shards)], fields(n))
            await pipe.execute()


@contextlib.contextmanager
def stores() -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flush-bench-")))
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(embedded_valkey(tmp / "vk"))
        server_url = os.environ.get("DATABASE_URL") or stack.enter_context(
            embedded_postgres(tmp / "pg", database="postgres")
        )
        yield redis_url, server_url


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.contextmanager
def worker(env: dict[str, str], root: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """The worker of the checkout at `root` (its workers/ and src/)."""
    if root != ROOT:
        env = {**env, "PYTHONPATH": str(root / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "workers.flush.WorkerSettings"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a local process, s; None if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class _CpuMeter:
    """CPU seconds spent by the worker, its Postgres backends and Redis over a window."""

    def __init__(self, worker_pid: int, admin: asyncpg.Connection, database: str, redis: Redis):
        self.worker_pid = worker_pid
        self.admin = admin
        self.database = database
        self.redis = redis
        self.start: dict[str, float | None] = {}
        self.start_backends: dict[int, float | None] = {}

    async def _sample(self) -> dict[str, float | None]:
        info = await self.redis.info("cpu")
        return {
            "worker": _cpu_seconds(self.worker_pid),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        }

    async def _backends(self) -> dict[int, float | None]:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database
        )
        return {row["pid"]: _cpu_seconds(row["pid"]) for row in rows}

    async def begin(self) -> None:
        self.start = await self._sample()
        self.start_backends = await self._backends()

    async def end(self) -> dict[str, float | None]:
        """CPU s per process since `begin` (Redis: the whole server, whoever used it;
        Postgres: the backends of the bench's database, those opened since included)."""
        stop = await self._sample()
        spent: dict[str, float | None] = {}
        for name, first in self.start.items():
            last = stop[name]
            spent[name] = None if first is None or last is None else round(last - first, 2)
        backends = await self._backends()
        if None in backends.values() or None in self.start_backends.values():
            spent["postgres"] = None
        else:
            spent["postgres"] = round(
                sum(cpu or 0.0 for cpu in backends.values())
                - sum(cpu or 0.0 for pid, cpu in self.start_backends.items() if pid in backends),
                2,
            )
        return spent


@contextlib.contextmanager
def _profiled(pid: int, path: Path | None) -> Iterator[None]:
    """py-spy samples the worker while the block runs: a speedscope file if `path` ends
    in .json, else collapsed stacks (one line a stack, for flamegraph.pl and grep)."""
    if path is None:
        yield
        return
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            *("record", "--pid", str(pid), "--rate", "250", "--nonblocking"),
            *("--format", "speedscope" if path.suffix == ".json" else "raw"),
            *("--output", str(path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait(timeout=60)


async def _measure(
    redis_url: str,
    server_url: str,
    entries: int,
    shards: int,
    batch: int | None,
    rate: int,
    seconds: float,
    profile: Path | None,
    worker_root: Path,
) -> dict[str, Any]:
    name = f"calltags_bench_{secrets.token_hex(4)}"
    prefix = f"ctbench:{secrets.token_hex(4)}:"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = _database(server_url, name)
    redis = Redis.from_url(redis_url)
    keys = KeySpace(prefix, shards)
    log = PostbackLog(redis, keys)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CALLTAGS_REDIS_PREFIX": prefix,
        "CALLTAGS_LOG_SHARDS": str(shards),
    }
    if batch is not None:
        env["CALLTAGS_FLUSH_BATCH"] = str(batch)
    try:
        await db.migrate(database_url)
        print(f"pre-filling {entries} entries over {shards} shards ...", flush=True)
        await append(redis, keys, 0, entries)

        with worker(env, worker_root) as proc:
            # 1. throughput: from the first entries taken to an empty backlog.
            meter = _CpuMeter(proc.pid, admin, name, redis)
            while not await _taken(redis, keys):
                await asyncio.sleep(0.002)
            with _profiled(proc.pid, profile):
                started = time.perf_counter()
                await meter.begin()
                while await _backlog(redis, keys):
                    await asyncio.sleep(0.02)
                elapsed = time.perf_counter() - started
                cpu = await meter.end()
            throughput = entries / elapsed
            print(
                f"throughput: {entries} rows in {elapsed:.2f} s = {throughput:,.0f} rows/s",
                flush=True,
            )
            print(
                "CPU s in that window: "
                + ", ".join(f"{k} {v if v is not None else '?'}" for k, v in cpu.items()),
                flush=True,
            )

            # 2. lag at a steady load.
            lag = await _steady_load(redis, keys, log, entries, rate, seconds)
            while (await log.measure()).postbacks:
                await asyncio.sleep(0.05)
        rows, stored = await _count(database_url)
        expected = entries + lag.get("appended", 0)
        assert rows == expected, f"{rows} rows for {expected} entries"
        accepted = sum(1 for n in range(expected) if n % 5 != 4)
        assert stored == accepted, f"{stored} rows with the outcome's status, {accepted} accepted"
        result = {
            "entries": entries,
            "shards": shards,
            "batch": batch,
            "rows_per_second": round(throughput),
            "cpu_seconds": cpu,
            **lag,
            "rows_checked": rows,
        }
        print(f"{rows} rows, none missing")
        return result
    finally:
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _backlog(redis: Redis, keys: KeySpace) -> int:
    """Entries left in the postback log shards: XLEN only, the bench's own load on the
    2 cores it shares with the worker, Redis and Postgres kept small."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in keys.log_shards_all():
            pipe.xlen(shard)
        lengths: list[int] = await pipe.execute()
    return sum(lengths)


async def _taken(redis: Redis, keys: KeySpace) -> bool:
    """True once the worker has taken entries of some shard (pending in its group)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in keys.log_shards_all():
            pipe.xinfo_groups(shard)
        replies: list[list[dict[str, Any]]] = await pipe.execute()
    return any(
        group["pending"] or group["last-delivered-id"] != b"0-0"
        for groups in replies
        for group in groups
    )


async def _steady_load(
    redis: Redis, keys: KeySpace, log: PostbackLog, first: int, rate: int, seconds: float
) -> dict[str, Any]:
    """Append `rate` entries/s for `seconds` while sampling the age of the oldest entry."""
    if seconds <= 0:
        return {}
    print(f"steady load: {rate} entries/s for {seconds} s ...", flush=True)
    ages: list[float] = []
    backlogs: list[int] = []

    async def sample() -> None:  # every 20 ms, evenly over the whole run
        while True:
            measured = await log.measure()
            ages.append(measured.oldest_age_seconds())
            backlogs.append(measured.postbacks)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    tick = 0.1  # s between appends
    appended = 0
    began = time.perf_counter()
    for step in range(int(seconds / tick)):
        await append(redis, keys, first + appended, int(rate * tick))
        appended += int(rate * tick)
        await asyncio.sleep(max(0.0, began + (step + 1) * tick - time.perf_counter()))
    sampler.cancel()
    quantiles = statistics.quantiles(ages, n=20)
    lag = {
        "steady_rate": rate,
        "lag_median_s": round(statistics.median(ages), 3),
        "lag_p95_s": round(quantiles[18], 3),
        "lag_max_s": round(max(ages), 3),
        "backlog_max": max(backlogs),
        "appended": appended,
    }
    print(
        f"lag at {rate}/s: median {lag['lag_median_s']} s, p95 {lag['lag_p95_s']} s,"
        f" max {lag['lag_max_s']} s (backlog at most {lag['backlog_max']})",
        flush=True,
    )
    return lag


async def _count(database_url: str) -> tuple[int, int]:
    """(rows, rows whose status came from the outcome code)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows: int = await conn.fetchval("SELECT count(*) FROM postbacks")
        stored: int = await conn.fetchval(
            "SELECT count(*) FROM postbacks WHERE status = $1", STATUS_STORED
        )
    finally:
        await conn.close()
    return rows, stored


def measure_flush(
    redis_url: str,
    database_url: str,
    entries: int = 200_000,
    *,
    shards: int = 8,
    batch: int | None = None,
    rate: int = 2000,
    seconds: float = 20.0,
    profile: Path | None = None,
    worker_root: Path = ROOT,
) -> dict[str, Any]:
    """Throughput (rows/s) and steady-load lag of one worker process.

    `database_url` names a Postgres server where the bench may create (and then drops)
    a database of its own; `batch` None keeps the worker's CALLTAGS_FLUSH_BATCH default;
    `worker_root` runs the worker of another checkout (say, the last commit's), to
    compare.
    """
    return asyncio.run(
        _measure(
            redis_url,
            database_url,
            entries,
            shards,
            batch,
            rate,
            seconds,
            profile,
            worker_root,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, help="CALLTAGS_FLUSH_BATCH (the worker's default)")
    parser.add_argument("--rate", type=int, default=2000, help="steady load, entries/s")
    parser.add_argument(
        "--seconds", type=float, default=20, help="steady load duration (0: throughput only)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy samples of the worker: FILE.json (speedscope) or FILE"
    )
    parser.add_argument(
        "--worker-root",
        type=Path,
        default=ROOT,
        help="run the worker of this checkout instead (e.g. `git archive HEAD` unpacked)",
    )
    args = parser.parse_args()
    with stores() as (redis_url, server_url):
        result = measure_flush(
            redis_url,
            server_url,
            args.entries,
            shards=args.shards,
            batch=args.batch,
            rate=args.rate,
            seconds=args.seconds,
            profile=args.profile,
            worker_root=args.worker_root.resolve(),
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flush.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
