"""`make bench-locust`: the locustfile headless for a fixed time against one calltags web
process on the bench's own stores; CSV and HTML reports go to bench/results/."""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime

from bench.run import HERE, RESULTS, calltags_server, stores_and_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=int, default=25)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--callers", type=int, default=100_000)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"locust-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    with stores_and_key(args.callers) as service, calltags_server(service.env) as base:
        env = dict(
            service.env,
            CALLTAGS_KEYS=service.secret,
            CALLTAGS_CALLERS=str(args.callers),
        )
        command = [
            sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
            "--host", base, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", args.run_time, "--csv", str(stem), "--html", f"{stem}.html",
            "--only-summary",
        ]  # fmt: skip
        code = subprocess.run(command, env=env, check=False).returncode
    print(f"reports: {stem}_stats.csv, {stem}.html")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
