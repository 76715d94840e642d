"""`make bench-bulk`: postbacks a second through one web process, posted one a request
(`postback.lua`) and in bulk posts of ITEMS items (`bulk.lua`), side by side.

The stores, key, pinning and wrk of `make bench` (bench/run.py: the web process on core
0, wrk on core 1). Rounds of a single run and a bulk run, in an order that alternates
from round to round; each bulk run's items a second are compared with the single run of
the same round (this machine's speed drifts over minutes), and the bench reports the
median of those ratios. Before every run the calls and log streams the runs wrote are
deleted (no flush worker runs, so the log backlog never fills). Results are printed and
saved as JSON in bench/results/bulk-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from datetime import UTC, datetime
from typing import Any

from bench.flood import clear_calls
from bench.run import RESULTS, calltags_server, ensure_wrk, stores_and_key, wrk
from calltags.keys import KeySpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=6, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=100, help="items a bulk post")
    parser.add_argument("--connections", type=int, default=64, help="of the single runs")
    parser.add_argument("--bulk-connections", type=int, default=4, help="of the bulk runs")
    parser.add_argument("--callers", type=int, default=100_000, help="caller pool size")
    args = parser.parse_args()
    ensure_wrk()
    rounds: list[dict[str, Any]] = []
    with stores_and_key(args.callers) as service:
        env = {**service.env, "ITEMS": str(args.items)}
        keys = KeySpace(env["CALLTAGS_REDIS_PREFIX"], 8)
        with calltags_server(env) as base:
            wrk(base, "postback.lua", 2, args.connections, env)  # warm caches, connections
            wrk(base, "bulk.lua", 2, args.bulk_connections, env)
            for n in range(args.rounds):
                found: dict[str, Any] = {}
                order = ("single", "bulk") if n % 2 == 0 else ("bulk", "single")
                for kind in order:
                    asyncio.run(clear_calls(env["REDIS_URL"], keys))
                    if kind == "single":
                        result = wrk(base, "postback.lua", args.seconds, args.connections, env)
                        result["items_per_second"] = result["rps"]
                    else:
                        result = wrk(base, "bulk.lua", args.seconds, args.bulk_connections, env)
                        result["items_per_second"] = result["rps"] * args.items
                    found[kind] = result
                    print(
                        f"round {n + 1} {kind:<6} {result['items_per_second']:8.0f} postbacks/s"
                        f"  ({result['rps']:.0f} requests/s, p50"
                        f" {result['p50_us'] / 1000:.1f} ms, non-2xx {result['non_2xx']})",
                        flush=True,
                    )
                found["ratio"] = found["bulk"]["items_per_second"] / found["single"]["rps"]
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
    }
    print(
        f"\nsingle {summary['single_per_second']} postbacks/s, bulk"
        f" {summary['bulk_items_per_second']} items/s ({args.items} a post):"
        f" {summary['ratio']} x (rounds: {' '.join(f'{r:.2f}' for r in ratios)})"
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bulk-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
