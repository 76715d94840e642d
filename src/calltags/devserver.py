"""`calltags run` (`make run`): the whole service on one machine, for local use.

With REDIS_URL / DATABASE_URL unset it starts embedded Valkey and PostgreSQL
(`calltags.devstores`) under the data folder, then applies migrations and runs the web
process and one flush worker (arq, the Procfile's `worker:`) until Ctrl-C, SIGTERM or
SIGHUP. It stops everything it started, in order: web and worker first, which finish
what they hold, then the stores they use.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from calltags.cli import RUN_ENV
from calltags.config import Settings
from calltags.devstores import Stores, StoresNotStarted, embedded_stores

STOP_WAIT = 35.0  # s web and worker get to stop; the worker's STOP_TIMEOUT is 30 s
POLL = 0.1  # s between two looks at the processes


class _Signals:
    """SIGINT, SIGTERM and SIGHUP, counted, never raised: an exception could land
    anywhere, half-way through starting or stopping a process. The first one asks for the
    stop, the next one during the stop for killing web and worker."""

    def __init__(self) -> None:
        self.count = 0
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._count)

    def _count(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:  # at once, even while a step of the start runs on
            with contextlib.suppress(OSError):
                os.write(sys.stdout.fileno(), b"\nstopping\n")


def _say(text: str, *, error: bool = False) -> None:
    # The terminal may be gone (SIGHUP): that must not cut the stop short.
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


@contextlib.contextmanager
def _foreground_job() -> Iterator[Callable[[], bool]]:
    """Run as the terminal's foreground job of its own when sharing one with the parent;
    yields a test of whether the terminal is lost.

    Under `make run` (or a shell script) a Ctrl-C also reaches make, and make, however
    cleanly its recipe then ends, waits for it and exits interrupted (130). In a process
    group of its own that holds the terminal, this process alone gets Ctrl-C, and make
    the zero exit it ends with. It then misses what the shell sends make's group alone:
    the SIGHUP of a closed terminal window. The test stands in for it: the terminal hung
    up, or taken back by the shell (make was killed).
    """
    try:
        parent_group = os.getpgrp()
        shared = os.isatty(0) and os.tcgetpgrp(0) == parent_group != os.getpid()
    except OSError:
        shared = False
    if not shared:
        yield lambda: False
        return
    os.setpgid(0, 0)
    own_group = os.getpgrp()
    _give_terminal(own_group)

    def lost() -> bool:
        try:
            return os.tcgetpgrp(0) != own_group
        except OSError:  # hung up
            return True

    # Ctrl-Z would stop this group alone, and `fg` continue make alone: it does nothing.
    # A handler, not SIG_IGN, which the children would inherit.
    previous = signal.signal(signal.SIGTSTP, lambda signum, frame: None)
    try:
        yield lost
    finally:
        signal.signal(signal.SIGTSTP, previous)
        with contextlib.suppress(OSError):
            if not lost():
                _give_terminal(parent_group)


def _give_terminal(group: int) -> None:
    # From a background group, tcsetpgrp gets SIGTTOU, which would stop the process.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, group)
    finally:
        signal.signal(signal.SIGTTOU, previous)


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


def _spawn(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    # A process group of its own: Ctrl-C reaches only `calltags run`, which stops each
    # process once, in order.
    return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, process_group=0)


def _watch(
    processes: dict[str, subprocess.Popen[bytes]],
    stores: Stores | None,
    signals: _Signals,
    terminal_lost: Callable[[], bool],
) -> str | None:
    """Wait for a stop signal, or for a process to end on its own: which one, if one did."""
    while not signals.count and not terminal_lost():
        for name, proc in processes.items():
            if proc.poll() is not None:
                return f"{name} stopped (exit status {proc.returncode})"
        if stores and stores.process.poll() is not None:
            return "the embedded stores stopped"
        time.sleep(POLL)
    return None


def _stop(processes: dict[str, subprocess.Popen[bytes]], signals: _Signals) -> None:
    """SIGTERM: uvicorn answers its open requests, the worker commits the batches it
    holds. The next signal, or STOP_WAIT, kills them: entries a killed worker read stay
    pending in Redis for the next one."""
    hurry = signals.count + 1
    for proc in processes.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_WAIT
    killed = False
    while any(proc.poll() is None for proc in processes.values()):
        if not killed and (signals.count >= hurry or time.monotonic() > deadline):
            _say("killing " + " and ".join(n for n, p in processes.items() if p.poll() is None))
            for proc in processes.values():
                if proc.poll() is None:
                    proc.kill()
            killed = True
        time.sleep(POLL)


def _serve(
    settings: Settings,
    signals: _Signals,
    terminal_lost: Callable[[], bool],
    stack: contextlib.ExitStack,
) -> str | None:
    """Start everything, each stop put on `stack`, and wait; what failed, if anything."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    stores = None
    if not settings.redis_url or not settings.database_url:
        if not settings.redis_url:
            _say(f"starting embedded Valkey in {data_dir / 'valkey'}")
        if not settings.database_url:
            _say(f"starting embedded PostgreSQL in {data_dir / 'postgres'}")
        try:
            stores = stack.enter_context(
                embedded_stores(
                    data_dir, valkey=not settings.redis_url, postgres=not settings.database_url
                )
            )
        except StoresNotStarted as exc:
            return str(exc)
        env.update(stores.urls)
    if signals.count:
        return None
    token, created = _admin_token(settings, data_dir)
    env["CALLTAGS_ADMIN_TOKEN"] = token
    env["PORT"] = str(settings.port)
    run_env = data_dir / RUN_ENV
    run_env.write_text(
        "".join(
            f"{name}={env[name]}\n"
            for name in ("REDIS_URL", "DATABASE_URL", "CALLTAGS_ADMIN_TOKEN", "PORT")
        )
    )
    run_env.chmod(0o600)
    stack.callback(run_env.unlink, missing_ok=True)

    python = sys.executable
    # Not interrupted: a migration runs to its end, then the stop follows.
    if _spawn([python, "-m", "calltags", "migrate"], env).wait() != 0:
        return "migrations failed"
    if signals.count:
        return None
    web = [
        python, "-m", "uvicorn", "--factory", "calltags.app:create_app",
        "--host", os.environ.get("HOST", "127.0.0.1"), "--port", str(settings.port),
        "--no-access-log",
    ]  # fmt: skip
    # The worker module lives at the top of the checkout, beside src/.
    worker = [python, "-m", "arq", "workers.flush.WorkerSettings"]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stack.callback(_stop, processes, signals)
    processes["web"] = _spawn(web, env)
    processes["worker"] = _spawn(worker, env, cwd=_checkout())
    _say(
        f"\ncalltags on http://localhost:{settings.port}"
        f"\nconsole: http://localhost:{settings.port}/console (sign in with the admin token)"
        f"\nadmin token{' (new)' if created else ''}: {token}"
        f"\n  (kept in {data_dir / 'admin_token'}; set CALLTAGS_ADMIN_TOKEN to choose one)"
        "\ncreate a publisher and a key there, or from another terminal:"
        "\n  .venv/bin/calltags publisher create 'Acme Leads'"
        "\n  .venv/bin/calltags key create --publisher 1 --name main"
        "\nCtrl-C stops everything.\n"
    )
    return _watch(processes, stores, signals, terminal_lost)


def run(settings: Settings) -> None:
    signals = _Signals()
    with _foreground_job() as terminal_lost:
        with contextlib.ExitStack() as stack:
            failure = _serve(settings, signals, terminal_lost, stack)
            if failure:
                _say(f"calltags run: {failure}", error=True)
        # Web and worker, run.env, then the stores have stopped, in that order.
        _say("stopped")
    if failure:
        raise SystemExit(1)
