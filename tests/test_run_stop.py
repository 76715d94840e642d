"""`calltags run` stops cleanly, with embedded Valkey and PostgreSQL: on Ctrl-C (SIGINT to
its whole process group, as a terminal sends it), on SIGTERM, on a second Ctrl-C during
the stop, and under `make run` in a terminal. Each time: exit status 0, no traceback,
the web process and the worker stopped before the stores, nothing left running, no
run.env left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from logtools import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0  # s: a first start runs initdb, slow on a busy machine
STOP_TIMEOUT = 30.0  # s


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the module: PostgreSQL's initdb runs once."""
    return tmp_path_factory.mktemp("run-stop") / "data"


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CALLTAGS_", "REDIS_URL", "DATABASE_URL", "MAKE", "MFLAGS"))
    }
    python_path = [str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        # Empty rather than absent, so that a .env file does not name the stores.
        REDIS_URL="",
        DATABASE_URL="",
        CALLTAGS_DATA_DIR=str(data_dir),
        PORT=str(port),
        PYTHONPATH=os.pathsep.join(python_path),
    )
    return env


@dataclass
class Run:
    """A started `calltags run`: its output so far, and every process it started."""

    pid: int
    port: int
    data_dir: Path
    output: Callable[[], str]
    started: list[Any]  # psutil.Process, untyped
    valkey_log_from: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _valkey_log(data_dir: Path) -> Path:
    return data_dir / "valkey" / "valkey.log"


def _log_size(data_dir: Path) -> int:
    path = _valkey_log(data_dir)
    return path.stat().st_size if path.is_file() else 0


def _ours(data_dir: Path) -> list[Any]:
    """Processes started for the data folder: the stores process, Valkey, PostgreSQL."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(data_dir) in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _wait_up(run: Run, alive: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert alive(), f"calltags run ended while starting:\n{run.output()}"
        assert time.monotonic() < deadline, f"no /healthz in time:\n{run.output()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{run.base_url}/healthz", timeout=1).status_code == 200:
                break
        time.sleep(0.2)
    # The worker too: it logs arq's start line once it is connected.
    while "Starting worker" not in run.output():
        assert alive() and time.monotonic() < deadline, f"no worker:\n{run.output()}"
        time.sleep(0.1)
    main = psutil.Process(run.pid)
    run.started[:] = [main, *main.children(recursive=True), *_ours(run.data_dir)]


def _kill_all(run: Run) -> None:
    """What a failed test left running goes, so it does not hold ports and folders."""
    for proc in [*run.started, *_ours(run.data_dir)]:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@contextlib.contextmanager
def started(data_dir: Path) -> Iterator[tuple[Run, subprocess.Popen[bytes]]]:
    """`calltags run` in a session of its own, as a terminal's foreground job is."""
    port = free_port()
    out_path = data_dir.parent / f"out-{port}.txt"
    valkey_log_from = _log_size(data_dir)
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "calltags", "run"],
            cwd=data_dir.parent,  # no stray .env
            env=_env(data_dir, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = Run(process.pid, port, data_dir, out_path.read_text, [], valkey_log_from)
    try:
        _wait_up(run, lambda: process.poll() is None)
        yield run, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        _kill_all(run)


def assert_clean_stop(run: Run, status: int | None) -> None:
    output = run.output()
    assert status == 0, output
    assert "Traceback" not in output, output
    assert not re.search(r"\w*Error\b", output), output
    # The last line: everything else, the worker's last log line too, came before.
    assert output.rstrip().endswith("stopped"), output
    assert_all_stopped(run)


def assert_all_stopped(run: Run) -> None:
    alive = [p for p in run.started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"
    assert not [p for p in _ours(run.data_dir) if p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)  # nothing left in the process group
    assert not (run.data_dir / "run.env").exists()
    # Valkey was stopped by the stores process, not by the terminal's Ctrl-C.
    with _valkey_log(run.data_dir).open("rb") as log:
        log.seek(run.valkey_log_from)
        valkey_log = log.read().decode(errors="replace")
    assert "Received SIGTERM" in valkey_log and "Received SIGINT" not in valkey_log


def _stop_status(process: subprocess.Popen[bytes]) -> int:
    return process.wait(STOP_TIMEOUT)


def _cli(run: Run, *args: str) -> str:
    """A `calltags` command from another terminal: it finds the stores through run.env."""
    done = subprocess.run(
        [sys.executable, "-m", "calltags", *args],
        cwd=run.data_dir.parent,
        env=_env(run.data_dir, run.port),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_ctrl_c_stops_worker_and_web_then_the_stores(data_dir: Path) -> None:
    with started(data_dir) as (run, process):
        # A postback through a key made with the CLI lands in Postgres (the log listing).
        publisher = json.loads(re.split(r"\n\s*\n", _cli(run, "publisher", "create", "Acme"))[0])
        created = _cli(run, "key", "create", "--publisher", str(publisher["id"]), "--name", "m")
        match = re.search(r"key \(shown once, store it now\): (\S+)", created)
        assert match, created
        caller = "+12125550188"
        answer = httpx.get(
            f"{run.base_url}/data_writing",
            params={"key": match[1], "caller_number": caller, "run": "stop"},
        )
        assert answer.status_code == 200, answer.text
        token = (data_dir / "admin_token").read_text().strip()
        deadline = time.monotonic() + 15
        while True:
            listing = httpx.get(
                f"{run.base_url}/admin/postbacks",
                params={"caller_number": caller},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert listing.status_code == 200, listing.text
            if listing.json()["items"]:
                break
            assert time.monotonic() < deadline, "the worker did not flush the postback"
            time.sleep(0.2)

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        status = _stop_status(process)
    assert_clean_stop(run, status)


def test_sigterm_stops_everything(data_dir: Path) -> None:
    with started(data_dir) as (run, process):
        process.terminate()
        status = _stop_status(process)
    assert_clean_stop(run, status)


def test_second_ctrl_c_during_the_stop_is_quiet(data_dir: Path) -> None:
    with started(data_dir) as (run, process):
        os.killpg(process.pid, signal.SIGINT)
        while "stopping" not in run.output():
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)
        status = _stop_status(process)
    assert_clean_stop(run, status)


def _make_command() -> list[str] | None:
    make = shutil.which("make")
    bin_dir = Path(sys.executable).parent
    if make is None or not (bin_dir / "calltags").is_file():
        return None
    return [make, "run", f"BIN={bin_dir}"]


needs_make = pytest.mark.skipif(_make_command() is None, reason="needs make, calltags script")


class Terminal:
    """`make run` typed in a terminal: make leads a session on a pseudo-terminal."""

    def __init__(self, data_dir: Path, command: list[str]) -> None:
        stamp = data_dir.parent / "installed"  # newer than pyproject.toml: no pip install
        stamp.touch()
        port = free_port()
        env = _env(data_dir, port)
        valkey_log_from = _log_size(data_dir)
        pid, self.fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.chdir(ROOT)
            os.execve(command[0], [*command, f"STAMP={stamp}"], env)
        self.chunks: list[bytes] = []
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.run = Run(pid, port, data_dir, self.output, [], valkey_log_from)
        self.status: int | None = None

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # EIO once the terminal's last user is gone
            while not self.closed.is_set():
                if select.select([self.fd], [], [], 0.1)[0]:
                    if not (chunk := os.read(self.fd, 65536)):
                        return
                    self.chunks.append(chunk)

    def output(self) -> str:
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")

    def ended(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.run.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def wait(self) -> int | None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while not self.ended():
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)
        return self.status

    def close(self) -> None:
        """The terminal window closes: the terminal hangs up."""
        if not self.closed.is_set():
            self.closed.set()
            self.reader.join()
            os.close(self.fd)


@contextlib.contextmanager
def make_run_in_a_terminal(data_dir: Path) -> Iterator[Terminal]:
    command = _make_command()
    assert command is not None
    terminal = Terminal(data_dir, command)
    try:
        _wait_up(terminal.run, lambda: not terminal.ended())
        yield terminal
    finally:
        _kill_all(terminal.run)
        terminal.close()
        with contextlib.suppress(ChildProcessError):
            terminal.wait()


@needs_make
def test_make_run_in_a_terminal_exits_zero_on_ctrl_c(data_dir: Path) -> None:
    """make gets a terminal's Ctrl-C too; interrupted, it would exit 130 however clean
    the stop. `calltags run` takes the terminal's foreground from it."""
    with make_run_in_a_terminal(data_dir) as terminal:
        os.write(terminal.fd, b"\x03")  # Ctrl-C, typed
        status = terminal.wait()
        terminal.close()  # all read
    assert "make: ***" not in terminal.output()
    assert_clean_stop(terminal.run, status)


@needs_make
def test_closing_the_terminal_stops_everything(data_dir: Path) -> None:
    with make_run_in_a_terminal(data_dir) as terminal:
        terminal.close()
        terminal.wait()  # make, hung up, waits for calltags run
    assert_all_stopped(terminal.run)
