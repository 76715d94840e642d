"""`make bench-flood`: routing's connects while publishers flood the web process.

Connect p99 and connects/s on 2 connections (wrk, bench/connect.lua), idle and while 64
connections flood postbacks (bench/postback.lua) into the web process, for routing

    same      served by the flooded web process itself (Procfile `web:`, core 0)
    own       a routing process of its own (Procfile `routing:`) on core 1, beside wrk
    own@0     a routing process of its own pinned to core 0, beside the flooded web
              process: the process boundary alone, no extra CPU

Each process is started from its Procfile line by the shell, as a platform does, with
$PORT and WEB_CONCURRENCY=1 in its environment and CALLTAGS_RATE_LIMIT=0 (the flood is
writes, not 429s). The flood runs flat out, or with --flood-rate N at most N postbacks
a second (bench/pacing.lua): the same flood in every arrangement. Rounds alternate the
arrangements (in a rotating order); each is compared with `same` under the flood of the
same round, and the bench reports the median of those ratios over rounds. Stores, key,
wrk and pinning come from bench/run.py; results are printed and saved as JSON in
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from bench.run import (
    HERE,
    LOAD_CPU,
    RESULTS,
    SERVER_CPU,
    _free_port,
    ensure_wrk,
    server_process,
    stores_and_key,
    wrk,
)
from calltags.keys import KeySpace

PROCFILE = HERE.parent / "Procfile"
LEAD = 1.0  # s the flood runs before and after the measured connects
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Arrangement:
    name: str
    process: str  # "web": connects go to the flooded web process; else a routing process
    cpus: str


ARRANGEMENTS = (
    Arrangement("same", "web", SERVER_CPU),
    Arrangement("own", "routing", LOAD_CPU),
    Arrangement("own@0", "routing", SERVER_CPU),
)


def procfile(kind: str) -> str:
    """The command of the Procfile's `kind:` line."""
    for line in PROCFILE.read_text().splitlines():
        name, found, command = line.partition(":")
        if found and name.strip() == kind:
            return command.strip()
    raise SystemExit(f"the Procfile has no {kind}: line")


def procfile_process(
    kind: str, env: dict[str, str], cpus: str
) -> contextlib.AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    """The Procfile's `kind:` process on a free port, pinned to `cpus`; (base URL, process)."""
    port = _free_port()
    env = dict(
        env,
        PORT=str(port),
        WEB_CONCURRENCY="1",
        PATH=os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", ""))),
        UVICORN_LOG_LEVEL="warning",  # as bench/run.py's servers; the Procfile sets none
    )
    # `exec`: the shell becomes uvicorn, so the pinning and the SIGTERM reach it.
    return server_process(["sh", "-c", f"exec {procfile(kind)}"], port, env, cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (/proc/stat): beside the
    bench's own processes, wrk, Redis, Postgres and whatever else runs here."""
    with open("/proc/stat") as stat:
        fields = [int(n) for n in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


async def clear_calls(redis_url: str, keys: KeySpace) -> None:
    """Drop the calls and log streams the runs wrote (the bench runs no flush worker),
    keeping the key and the pending tags: Redis stays small, every run starts alike."""
    redis = Redis.from_url(redis_url)
    try:
        await redis.unlink(*keys.log_shards_all(), *keys.call_log_shards_all())
        for pattern in (f"{keys.prefix}call:*", f"{keys.prefix}{{*}}:c"):
            batch: list[bytes] = []
            async for name in redis.scan_iter(match=pattern, count=5000):
                batch.append(name)
                if len(batch) == 1000:
                    await redis.unlink(*batch)
                    batch.clear()
            if batch:
                await redis.unlink(*batch)
    finally:
        await redis.aclose()


def measure(
    base: str,
    flood_base: str | None,
    processes: dict[str, subprocess.Popen[bytes]],
    args: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    """Connects on `base` for args.seconds, while a postback flood runs on `flood_base`
    (None: idle); with the flood's own result and each process's share of a core."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        flood = None
        if flood_base is not None:
            length = round(args.seconds + 2 * LEAD)
            paced = dict(env, FLOOD_RATE=str(args.flood_rate))
            flood = pool.submit(
                wrk, flood_base, "postback.lua", length, args.flood, paced, ("pacing.lua",)
            )
            time.sleep(LEAD)
        before = {name: cpu_seconds(proc.pid) for name, proc in processes.items()}
        before["machine"] = machine_cpu_seconds()
        started = time.monotonic()
        result = wrk(base, "connect.lua", args.seconds, args.connections, env)
        wall = time.monotonic() - started
        after = {name: cpu_seconds(proc.pid) for name, proc in processes.items()}
        after["machine"] = machine_cpu_seconds()
        # Cores' worth of CPU each process, and the whole machine, used in the run.
        result["cpu_share"] = {
            name: round((after[name] - before[name]) / wall, 3) for name in after
        }
        result["flood"] = flood.result() if flood is not None else None
    return result


def _line(n: int, name: str, result: dict[str, Any]) -> str:
    flood = result["flood"]
    text = (
        f"round {n + 1} {name:<6} {'flood' if flood else 'idle':<6}"
        f"{result['rps']:7.0f} connects/s  p50 {result['p50_us'] / 1000:6.2f} ms"
        f"  p99 {result['p99_us'] / 1000:6.2f} ms  non-2xx {result['non_2xx']}"
    )
    if flood:
        text += f"  | flood {flood['rps']:5.0f}/s non-2xx {flood['non_2xx']}"
    shares = " ".join(f"{k} {v:.2f}" for k, v in result["cpu_share"].items())
    return f"{text}  | cores: {shares}"


def _summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds of each arrangement, and the ratios of each under the flood to
    `same` under the flood of the same round."""
    found: dict[str, Any] = {}
    for arrangement in ARRANGEMENTS:
        name = arrangement.name
        idle = [r[name]["idle"] for r in rounds]
        flood = [r[name]["flood"] for r in rounds]
        same = [r["same"]["flood"] for r in rounds]
        rps_ratios = [f["rps"] / s["rps"] for f, s in zip(flood, same, strict=True)]
        p99_ratios = [f["p99_us"] / s["p99_us"] for f, s in zip(flood, same, strict=True)]
        found[name] = {
            "idle_rps": round(statistics.median(r["rps"] for r in idle)),
            "idle_p99_ms": round(statistics.median(r["p99_us"] for r in idle) / 1000, 2),
            "flood_rps": round(statistics.median(r["rps"] for r in flood)),
            "flood_p50_ms": round(statistics.median(r["p50_us"] for r in flood) / 1000, 2),
            "flood_p99_ms": round(statistics.median(r["p99_us"] for r in flood) / 1000, 2),
            "postbacks_rps": round(statistics.median(r["flood"]["rps"] for r in flood)),
            "flood_over_idle_rps": round(
                statistics.median(f["rps"] / i["rps"] for f, i in zip(flood, idle, strict=True)),
                3,
            ),
            "rps_over_same": round(statistics.median(rps_ratios), 3),
            "rps_over_same_runs": [round(r, 3) for r in rps_ratios],
            "p99_over_same": round(statistics.median(p99_ratios), 3),
            "p99_over_same_runs": [round(r, 3) for r in p99_ratios],
            "non_2xx": sum(r["non_2xx"] + (r["flood"] or {}).get("non_2xx", 0) for r in flood)
            + sum(r["non_2xx"] for r in idle),
        }
    return found


def _print_summary(summary: dict[str, Any]) -> None:
    print("\nmedians over rounds; x same: ratio to `same` under the flood of the same round")
    print(
        f"{'':<7}{'idle/s':>8}{'idle p99':>10}{'flood/s':>9}{'flood p99':>11}"
        f"{'postbacks/s':>13}{'x same /s':>11}{'x same p99':>12}"
    )
    for arrangement in ARRANGEMENTS:
        s = summary[arrangement.name]
        print(
            f"{arrangement.name:<7}{s['idle_rps']:>8}{s['idle_p99_ms']:>10}{s['flood_rps']:>9}"
            f"{s['flood_p99_ms']:>11}{s['postbacks_rps']:>13}{s['rps_over_same']:>11}"
            f"{s['p99_over_same']:>12}"
        )
    for name in ("own", "own@0"):
        s = summary[name]
        met = s["rps_over_same"] >= 4 and s["p99_over_same"] <= 0.5
        print(
            f"target for {name} (>= 4x connects/s, <= 0.5x p99 of same under the flood):"
            f" {'met' if met else 'not met'}; runs {s['rps_over_same_runs']}"
            f" / {s['p99_over_same_runs']}"
        )


@contextlib.contextmanager
def _processes(env: dict[str, str]) -> Iterator[dict[str, tuple[str, subprocess.Popen[bytes]]]]:
    """The web process and a routing process for each placement, named as the
    arrangements that use them; each arrangement's connects go to `processes[name]`."""
    with contextlib.ExitStack() as stack:
        web = stack.enter_context(procfile_process("web", env, SERVER_CPU))
        found = {}
        for arrangement in ARRANGEMENTS:
            if arrangement.process == "web":
                found[arrangement.name] = web
            else:
                found[arrangement.name] = stack.enter_context(
                    procfile_process(arrangement.process, env, arrangement.cpus)
                )
        yield found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="length of each connect run")
    parser.add_argument("--connections", type=int, default=2, help="routing's connections")
    parser.add_argument("--flood", type=int, default=64, help="the flood's connections")
    parser.add_argument(
        "--flood-rate",
        type=int,
        default=0,
        help="at most this many postbacks a second in all (bench/pacing.lua); 0: flat out",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=100_000, help="caller pool size")
    args = parser.parse_args()
    ensure_wrk()
    load = [os.getloadavg()]

    rounds: list[dict[str, dict[str, Any]]] = []
    with stores_and_key(args.callers) as service:
        env = dict(service.env, CALLTAGS_RATE_LIMIT="0")
        keys = KeySpace(env["CALLTAGS_REDIS_PREFIX"], 8)
        with _processes(env) as served:
            web_base = served["same"][0]
            watched = {"web": served["same"][1]}
            watched |= {n: p for n, (_, p) in served.items() if n != "same"}
            wrk(web_base, "postback.lua", 2, args.flood, env)  # warm caches and connections
            for base, _ in served.values():
                wrk(base, "connect.lua", 2, args.connections, env)
            for n in range(args.rounds):
                turn = n % len(ARRANGEMENTS)  # a rotating order: none always goes first
                found: dict[str, dict[str, Any]] = {}
                for arrangement in ARRANGEMENTS[turn:] + ARRANGEMENTS[:turn]:
                    base = served[arrangement.name][0]
                    found[arrangement.name] = {}
                    for flood_base in (None, web_base):
                        asyncio.run(clear_calls(env["REDIS_URL"], keys))
                        result = measure(base, flood_base, watched, args, env)
                        found[arrangement.name]["flood" if flood_base else "idle"] = result
                        print(_line(n, arrangement.name, result), flush=True)
                rounds.append(found)
            asyncio.run(clear_calls(env["REDIS_URL"], keys))
    load.append(os.getloadavg())

    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "args": vars(args),
        "placement": {
            "web": f"core {SERVER_CPU}",
            **{a.name: f"core {a.cpus}" for a in ARRANGEMENTS},
            "wrk": f"core {LOAD_CPU}",
        },
        "loadavg_before_after": load,
        "results": _summary(rounds),
        "rounds": rounds,
    }
    _print_summary(summary["results"])
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"flood-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
