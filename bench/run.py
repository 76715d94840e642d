"""`make bench`: side-by-side peak throughput, flush throughput and Redis memory.

Baseline and calltags run one uvicorn process each with the same settings; wrk drives
them alternately (hello, postback, hello, connect, ... "A B A B") over random callers
from a pool. Redis and Postgres come from REDIS_URL / DATABASE_URL when set, embedded
servers otherwise; the bench uses a database and key prefix of its own and removes them.
Results are printed and saved as JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from bench.flush_bench import measure_flush
from calltags import db
from calltags.devstores import embedded_postgres, embedded_valkey
from calltags.keys import KeySpace
from calltags.models import MAX_BURST, MAX_RATE, KeyCreate
from calltags.publishers import Publishers
from calltags.store import open_store

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
UVICORN_FLAGS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]
SERVER_CPU = "0"  # the web process under test and the baseline run on core 0
LOAD_CPU = "1"  # wrk runs on core 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it (apt-get install wrk)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


def _pinned(cpu: str, command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", cpu, *command] if taskset and (os.cpu_count() or 1) > 1 else command


def server(
    command: list[str], port: int, env: dict[str, str], cpus: str = SERVER_CPU
) -> contextlib.AbstractContextManager[str]:
    return _base_url(server_process(command, port, env, cpus))


@contextlib.contextmanager
def server_process(
    command: list[str], port: int, env: dict[str, str], cpus: str = SERVER_CPU
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`server`, also handing out the process (bench/flood.py reads its CPU time)."""
    proc = subprocess.Popen(_pinned(cpus, command), env=env, cwd=HERE.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {command}")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wrk(
    base: str,
    script: str,
    seconds: int,
    connections: int,
    env: dict[str, str],
    also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One wrk run of `script` (plus the scripts `also`, e.g. pacing.lua) on LOAD_CPU."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as combined:
        for name in (script, *also):
            combined.write((HERE / name).read_text() + "\n" if name else "")
        combined.write((HERE / "summary.lua").read_text())
    try:
        out = subprocess.run(
            _pinned(
                LOAD_CPU,
                [
                    "wrk",
                    "-t1",
                    f"-c{connections}",
                    f"-d{seconds}s",
                    "-s",
                    combined.name,
                    base + "/",
                ],
            ),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(combined.name)
    match = re.search(r"^RESULT (\{.*\})$", out.stdout, re.M)
    if match is None:
        raise SystemExit(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


async def _prepare(redis_url: str, database_url: str, prefix: str) -> tuple[str, str]:
    await db.migrate(database_url)
    redis = Redis.from_url(redis_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        publishers = Publishers(pool, redis, KeySpace(prefix, 8))
        publisher = await publishers.create_publisher("bench")
        # No rate limit on the bench key: the bench measures the write, not the 429 path.
        new = KeyCreate(name="bench", rate_limit_per_second=MAX_RATE, rate_limit_burst=MAX_BURST)
        _, secret, _ = await publishers.create_key(publisher.id, new)
    finally:
        await pool.close()
        await redis.aclose()
    return secret, secrets.token_urlsafe(16)


async def _drop_prefix(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        async for name in redis.scan_iter(match=f"{prefix}*", count=5000):
            await redis.delete(name)
    finally:
        await redis.aclose()


async def pending_caller_memory(callers: int = 20_000) -> dict[str, Any]:
    """used_memory delta per pending caller with 3 tags, on a fresh embedded Valkey."""
    with tempfile.TemporaryDirectory() as folder, embedded_valkey(Path(folder)) as url:
        redis = Redis.from_url(url)
        try:
            store = open_store(redis, KeySpace("ct:", 8), call_ttl_seconds=2_592_000)
            before = (await redis.info("memory"))["used_memory"]
            tags = {"utm_source": "google", "prequalified": "true", "age": "42"}
            batch = 500
            for start in range(0, callers, batch):
                await asyncio.gather(
                    *(
                        store.write_tags(
                            f"+1212{2000000 + n:07d}",
                            tags,
                            publisher_id=12,
                            key_id=345,
                            cutoff_seconds=3600,
                            storage_seconds=86400,
                        )
                        for n in range(start, start + batch)
                    )
                )
            after = (await redis.info("memory"))["used_memory"]
        finally:
            await redis.aclose()
    return {"callers": callers, "tags_each": 3, "bytes_per_caller": (after - before) / callers}


def _ratios(order: list[tuple[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """Each calltags run's rps over the mean of the two baseline runs around it: on a
    shared machine whose speed drifts (seen here: the baseline alone ranged 5,600-15,800
    rps in one bench), a run is compared with its neighbours, not with the whole bench."""
    found: dict[str, list[float]] = {"hello": [1.0], "postback": [], "connect": []}
    for n, (label, result) in enumerate(order):
        if label == "hello":
            continue
        around = [order[m][1]["rps"] for m in (n - 1, n + 1) if order[m][0] == "hello"]
        found[label].append(result["rps"] / statistics.mean(around))
    return found


@dataclass
class Service:
    env: dict[str, str]  # what the web process got, plus CALLTAGS_KEY / CALLTAGS_TOKEN for wrk
    secret: str
    token: str


@contextlib.contextmanager
def stores_and_key(callers: int) -> Iterator[Service]:
    """Redis, Postgres, a database and key prefix of the bench's own, and a postback key."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="calltags-bench-")))
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(embedded_valkey(tmp / "vk"))
        server_db = os.environ.get("DATABASE_URL") or stack.enter_context(
            embedded_postgres(tmp / "pg", database="postgres")
        )
        name = f"calltags_bench_{secrets.token_hex(4)}"
        asyncio.run(db.create_database(server_db, name))
        stack.callback(lambda: asyncio.run(db.drop_database(server_db, name)))
        database_url = db.with_database(server_db, name)
        prefix = f"ctbench:{secrets.token_hex(4)}:"
        stack.callback(lambda: asyncio.run(_drop_prefix(redis_url, prefix)))
        secret, token = asyncio.run(_prepare(redis_url, database_url, prefix))
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            DATABASE_URL=database_url,
            CALLTAGS_REDIS_PREFIX=prefix,
            CALLTAGS_ROUTING_TOKEN=token,
            CALLTAGS_ADMIN_TOKEN=secrets.token_urlsafe(16),
            CALLTAGS_KEY=secret,
            CALLTAGS_TOKEN=token,
            CALLERS=str(callers),
        )
        yield Service(env, secret, token)


def calltags_server(
    env: dict[str, str], web_processes: int = 1
) -> contextlib.AbstractContextManager[str]:
    """calltags under uvicorn; `web_processes` > 1 runs that many processes on one port
    (uvicorn --workers, as WEB_CONCURRENCY does in the Procfile), free to use every core."""
    return _base_url(calltags_process(env, web_processes))


def calltags_process(
    env: dict[str, str], web_processes: int = 1
) -> contextlib.AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    """`calltags_server`, also handing out the process (bench/ack.py reads its CPU time)."""
    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "calltags.app:create_app",
               "--port", str(port), "--workers", str(web_processes), *UVICORN_FLAGS]  # fmt: skip
    cpus = SERVER_CPU if web_processes == 1 else f"0-{(os.cpu_count() or 1) - 1}"
    return server_process(command, port, env, cpus=cpus)


@contextlib.contextmanager
def _base_url(
    running: contextlib.AbstractContextManager[tuple[str, subprocess.Popen[bytes]]],
) -> Iterator[str]:
    with running as (base, _):
        yield base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of hello, postback, hello, connect"
    )
    parser.add_argument("--callers", type=int, default=100_000, help="caller pool size")
    parser.add_argument("--flush-entries", type=int, default=200_000)
    parser.add_argument(
        "--web-processes",
        type=int,
        default=1,
        help="calltags web processes (uvicorn --workers); past 1 they may use every core",
    )
    args = parser.parse_args()
    ensure_wrk()

    with contextlib.ExitStack() as stack:
        service = stack.enter_context(stores_and_key(args.callers))
        env = service.env
        hello_port = _free_port()
        hello = stack.enter_context(
            server(
                [sys.executable, "-m", "uvicorn", "bench.hello:app", "--port", str(hello_port),
                 *UVICORN_FLAGS],
                hello_port,
                env,
            )
        )  # fmt: skip
        app = stack.enter_context(calltags_server(env, args.web_processes))

        runs: dict[str, list[dict[str, Any]]] = {"hello": [], "postback": [], "connect": []}
        # hello, postback, hello, connect, ... and a last hello: every calltags run sits
        # between two baseline runs, and its ratio is to their mean (see _ratios).
        plan = [
            ("hello", hello, ""),
            ("postback", app, "postback.lua"),
            ("hello", hello, ""),
            ("connect", app, "connect.lua"),
        ]
        sequence = [step for _ in range(args.rounds) for step in plan] + [plan[0]]
        wrk(app, "postback.lua", 2, args.connections, env)  # warm caches and connections
        order: list[tuple[str, dict[str, Any]]] = []
        for n, (label, base, script) in enumerate(sequence):
            result = wrk(base, script, args.seconds, args.connections, env)
            runs[label].append(result)
            order.append((label, result))
            print(
                f"run {n + 1:>2}/{len(sequence)} {label:<9} {result['rps']:8.0f} rps"
                f"  p50 {result['p50_us'] / 1000:6.2f} ms"
                f"  p99 {result['p99_us'] / 1000:6.2f} ms"
                f"  non-2xx {result['non_2xx']}",
                flush=True,
            )

    # Flush throughput of one worker, once the web processes are gone.
    flush = (
        measure_flush(
            os.environ.get("REDIS_URL") or "",
            os.environ.get("DATABASE_URL") or "",
            entries=args.flush_entries,
            seconds=10,
        )
        if os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL")
        else _flush_on_embedded(args.flush_entries)
    )
    memory = asyncio.run(pending_caller_memory())
    ratios = _ratios(order)
    summary: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "args": vars(args)}
    for label in ("hello", "postback", "connect"):
        results = runs[label]
        summary[label] = {
            "rps": round(statistics.median(r["rps"] for r in results)),
            "p50_ms": round(statistics.median(r["p50_us"] for r in results) / 1000, 2),
            "p99_ms": round(statistics.median(r["p99_us"] for r in results) / 1000, 2),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "ratio_to_hello": round(statistics.median(ratios[label]), 3),
            "ratios": [round(r, 3) for r in ratios[label]],
        }
    summary["redis_memory"] = memory
    summary["flush"] = flush

    print("\nmedians of the runs; x hello: of each run over the baseline runs around it")
    print(f"{'':<10}{'rps':>8}{'p50 ms':>9}{'p99 ms':>9}{'x hello':>9}   x hello of each run")
    for label in ("hello", "postback", "connect"):
        s = summary[label]
        each = " ".join(f"{r:.3f}" for r in s["ratios"]) if label != "hello" else ""
        print(
            f"{label:<10}{s['rps']:>8}{s['p50_ms']:>9}{s['p99_ms']:>9}"
            f"{s['ratio_to_hello']:>9}   {each}"
        )
    print(f"\nRedis memory per pending caller with 3 tags: {memory['bytes_per_caller']:.0f} bytes")
    print(f"flush, one worker: {flush.get('rows_per_second', 0):.0f} rows/s")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {path.relative_to(HERE.parent)}")


def _flush_on_embedded(entries: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="calltags-bench-") as folder,
        embedded_valkey(Path(folder) / "vk") as redis_url,
        embedded_postgres(Path(folder) / "pg", database="postgres") as server_db,
    ):
        return measure_flush(redis_url, server_db, entries=entries, seconds=10)


if __name__ == "__main__":
    main()
