"""`make bench-bulk`: postbacks a second through one web process, posted one a request
(`postback.lua`) and in bulk posts of ITEMS items (`bulk.lua`), side by side.

The stores, key, pinning and wrk of `make bench` (bench/run.py: the web process on core
0, wrk on core 1). Rounds of a single run and a bulk run, in an order that alternates
from round to round; each bulk run's items a second are compared with the single run of
the same round (this machine's speed drifts over minutes), and the bench reports the
median of those ratios. Before every run the calls and log streams the runs wrote are
deleted (no flush worker runs, so the log backlog never fills). Each run also reads
the CPU the web process and Redis spent a postback (/proc/PID/stat, INFO cpu) and the
CPU the whole machine used (/proc/stat), which shows when something else was running.
Results are printed and saved as JSON in bench/results/bulk-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from bench.flood import clear_calls, cpu_seconds, machine_cpu_seconds
from bench.run import RESULTS, calltags_process, ensure_wrk, stores_and_key, wrk
from calltags.keys import KeySpace

BULK = ("bulk.lua",)  # appended to postback.lua: its callers, a bulk post's request()


async def _redis_cpu(url: str) -> float:
    redis = Redis.from_url(url)
    try:
        info = await redis.info("cpu")
    finally:
        await redis.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measured(run: Any, pid: int, redis_url: str) -> dict[str, Any]:
    """`run()`'s wrk result, with the CPU seconds the web process, Redis and the whole
    machine spent meanwhile."""
    before = (cpu_seconds(pid), asyncio.run(_redis_cpu(redis_url)), machine_cpu_seconds())
    result: dict[str, Any] = run()
    after = (cpu_seconds(pid), asyncio.run(_redis_cpu(redis_url)), machine_cpu_seconds())
    for name, start, end in zip(("web", "redis", "machine"), before, after, strict=True):
        result[f"{name}_cpu_s"] = round(end - start, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=6, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=100, help="items a bulk post")
    parser.add_argument("--connections", type=int, default=64, help="of the single runs")
    parser.add_argument("--bulk-connections", type=int, default=16, help="of the bulk runs")
    parser.add_argument("--callers", type=int, default=100_000, help="caller pool size")
    args = parser.parse_args()
    ensure_wrk()
    rounds: list[dict[str, Any]] = []
    with stores_and_key(args.callers) as service:
        env = {**service.env, "ITEMS": str(args.items)}
        keys = KeySpace(env["CALLTAGS_REDIS_PREFIX"], 8)
        with calltags_process(env) as (base, proc):
            wrk(base, "postback.lua", 2, args.connections, env)  # warm caches, connections
            wrk(base, "postback.lua", 2, args.bulk_connections, env, BULK)
            for n in range(args.rounds):
                found: dict[str, Any] = {}
                order = ("single", "bulk") if n % 2 == 0 else ("bulk", "single")
                for kind in order:
                    asyncio.run(clear_calls(env["REDIS_URL"], keys))
                    also, connections, items = (
                        ((), args.connections, 1)
                        if kind == "single"
                        else (BULK, args.bulk_connections, args.items)
                    )
                    result = measured(
                        lambda: wrk(base, "postback.lua", args.seconds, connections, env, also),  # noqa: B023
                        proc.pid,
                        env["REDIS_URL"],
                    )
                    result["items_per_second"] = result["rps"] * items
                    postbacks = result["requests"] * items
                    result["web_us"] = result["web_cpu_s"] / postbacks * 1e6
                    result["redis_us"] = result["redis_cpu_s"] / postbacks * 1e6
                    found[kind] = result
                    print(
                        f"round {n + 1} {kind:<6} {result['items_per_second']:8.0f} postbacks/s"
                        f"  ({result['rps']:.0f} requests/s, p50"
                        f" {result['p50_us'] / 1000:.1f} ms, non-2xx {result['non_2xx']});"
                        f" CPU a postback: web {result['web_us']:.0f} us,"
                        f" Redis {result['redis_us']:.0f} us;"
                        f" machine {result['machine_cpu_s'] / args.seconds:.2f} cores",
                        flush=True,
                    )
                found["ratio"] = found["bulk"]["items_per_second"] / found["single"]["rps"]
                found["web_cpu_ratio"] = found["single"]["web_us"] / found["bulk"]["web_us"]
                rounds.append(found)
    ratios = [r["ratio"] for r in rounds]
    summary = {
        "when": datetime.now(UTC).isoformat(),
        "args": vars(args),
        "rounds": rounds,
        "single_per_second": round(statistics.median(r["single"]["rps"] for r in rounds)),
        "bulk_items_per_second": round(
            statistics.median(r["bulk"]["items_per_second"] for r in rounds)
        ),
        "ratio": round(statistics.median(ratios), 2),
        "ratios": [round(r, 2) for r in ratios],
        "web_cpu_ratio": round(statistics.median(r["web_cpu_ratio"] for r in rounds), 2),
    }
    print(
        f"\nsingle {summary['single_per_second']} postbacks/s, bulk"
        f" {summary['bulk_items_per_second']} items/s ({args.items} a post):"
        f" {summary['ratio']} x (rounds: {' '.join(f'{r:.2f}' for r in ratios)});"
        f" web CPU a postback: single {summary['web_cpu_ratio']} x a bulk item's"
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bulk-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
