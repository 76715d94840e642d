"""`python -m bench.ab --before DIR`: single postbacks through this checkout's web process
beside another checkout's (DIR, e.g. a worktree of main), side by side in one run.

The stores, key, pinning and wrk of `make bench` (bench/run.py). Both web processes run
at once on core 0, each importing its own checkout's code (PYTHONPATH), on the same Redis
key prefix; only one is driven at a time (wrk on core 1, `postback.lua`), in rounds
whose order alternates. Each run reads the CPU its web process spent a postback
(/proc/PID/stat): beside requests a second, which the machine's drift moves by ±30 %
between runs, the CPU a postback is what the code costs. Each round compares its two
runs; the bench reports the medians. Before every run the calls and log streams are
deleted (no flush worker runs). Results are printed and saved in bench/results/ab-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bulk import measured
from bench.flood import clear_calls
from bench.run import HERE, RESULTS, calltags_process, ensure_wrk, stores_and_key, wrk
from calltags.keys import KeySpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--after", type=Path, default=HERE.parent, help="default: this one")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--callers", type=int, default=100_000, help="caller pool size")
    args = parser.parse_args()
    ensure_wrk()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    rounds: list[dict[str, Any]] = []
    with stores_and_key(args.callers) as service, contextlib.ExitStack() as stack:
        keys = KeySpace(service.env["CALLTAGS_REDIS_PREFIX"], 8)
        servers = {
            side: stack.enter_context(
                calltags_process({**service.env, "PYTHONPATH": f"{tree / 'src'}:{tree}"})
            )
            for side, tree in trees.items()
        }
        for base, _ in servers.values():
            wrk(base, "postback.lua", 2, args.connections, service.env)  # warm up
        for n in range(args.rounds):
            found: dict[str, Any] = {}
            for side in ("before", "after") if n % 2 == 0 else ("after", "before"):
                asyncio.run(clear_calls(service.env["REDIS_URL"], keys))
                base, proc = servers[side]
                result = measured(
                    lambda: wrk(base, "postback.lua", args.seconds, args.connections, service.env),  # noqa: B023
                    proc.pid,
                    service.env["REDIS_URL"],
                )
                result["web_us"] = result["web_cpu_s"] / result["requests"] * 1e6
                found[side] = result
                print(
                    f"round {n + 1} {side:<6} {result['rps']:6.0f} postbacks/s, web CPU"
                    f" {result['web_us']:4.0f} us a postback, non-2xx {result['non_2xx']},"
                    f" machine {result['machine_cpu_s'] / args.seconds:.2f} cores",
                    flush=True,
                )
            found["rps_ratio"] = found["after"]["rps"] / found["before"]["rps"]
            found["cpu_ratio"] = found["after"]["web_us"] / found["before"]["web_us"]
            rounds.append(found)
    summary = {
        "when": datetime.now(UTC).isoformat(),
        "args": {**vars(args), "before": str(args.before), "after": str(args.after)},
        "rounds": rounds,
        "rps_ratio": round(statistics.median(r["rps_ratio"] for r in rounds), 3),
        "cpu_ratio": round(statistics.median(r["cpu_ratio"] for r in rounds), 3),
    }
    for side in ("before", "after"):
        summary[side] = {
            "rps": round(statistics.median(r[side]["rps"] for r in rounds)),
            "web_us": round(statistics.median(r[side]["web_us"] for r in rounds)),
        }
    print(
        f"\nmedians: before {summary['before']['rps']} postbacks/s,"
        f" {summary['before']['web_us']} us web CPU a postback; after"
        f" {summary['after']['rps']} postbacks/s, {summary['after']['web_us']} us;"
        f" after / before: {summary['rps_ratio']} x the throughput,"
        f" {summary['cpu_ratio']} x the CPU a postback"
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ab-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
