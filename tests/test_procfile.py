"""The Procfile's `web:` and `routing:` lines, started by the shell as a platform starts
them ($PORT a free port, WEB_CONCURRENCY=1) on the test run's stores: tags posted to the
web process are claimed by a connect on the routing process, which serves the routing
API and /healthz and answers every other path with a JSON 404. Both stop on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import ADMIN, ADMIN_TOKEN, ROUTING, ROUTING_TOKEN, Keys, fresh_caller
from logtools import (
    ROOT,
    eventually,
    free_port,
    own_prefix,
    process_env,
    process_output,
    processes,
    start_process,
)

from calltags.config import Settings
from calltags.store import STATUS_STORED

PROCESSES = ("web", "routing")
TOKENS = {"CALLTAGS_ADMIN_TOKEN": ADMIN_TOKEN, "CALLTAGS_ROUTING_TOKEN": ROUTING_TOKEN}
NOT_ROUTING = ("/admin/publishers", "/data_writing", "/openapi.json", "/metrics")


def _procfile() -> dict[str, str]:
    """Process type -> command, from the Procfile's `type: command` lines."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {
        kind.strip(): command.strip()
        for kind, found, command in (line.partition(":") for line in lines)
        if found and not kind.lstrip().startswith("#")
    }


def _platform(port: int) -> dict[str, str]:
    """What a platform adds to a process's environment: its port and concurrency, and a
    PATH on which the Procfile's `uvicorn` is the one of the test run's Python."""
    path = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))
    return {"PORT": str(port), "WEB_CONCURRENCY": "1", "PATH": path}


async def test_web_and_routing_processes_from_the_procfile(
    settings: Settings, redis_url: str, queue_url: str, database_url: str, tmp_path: Path
) -> None:
    commands = _procfile()
    mine = own_prefix(settings, "procfile")
    # The shutdown lines checked below are uvicorn's info lines.
    env = process_env(mine, redis_url, queue_url, database_url, **TOKENS, UVICORN_LOG_LEVEL="info")
    with processes() as started:
        bases: dict[str, str] = {}
        for kind in PROCESSES:
            port = free_port()
            # `exec`: the shell becomes uvicorn, which gets the SIGTERM.
            command = ["sh", "-c", f"exec {commands[kind]}"]
            start_process(started, tmp_path, kind, command, env | _platform(port))
            bases[kind] = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=bases["web"], timeout=10) as web,
            httpx.AsyncClient(base_url=bases["routing"], timeout=10) as routing,
        ):
            await _wait_until_up(started, tmp_path, [web, routing])
            await _drive(web, routing)

        for _, proc in started:
            proc.send_signal(signal.SIGTERM)
        for kind, proc in started:
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(
                    f"{kind} ignored SIGTERM:\n{process_output(tmp_path, kind)}"
                ) from exc
            # uvicorn shuts down, then raises the signal it caught again: a clean stop
            # exits by SIGTERM, after the app's lifespan shutdown completed.
            output = process_output(tmp_path, kind)
            assert code == -signal.SIGTERM, f"{kind} exited {code}:\n{output}"
            assert "Application shutdown complete" in output, output
            assert "Traceback" not in output, output


async def _wait_until_up(
    started: list[tuple[str, subprocess.Popen[bytes]]],
    folder: Path,
    clients: list[httpx.AsyncClient],
) -> None:
    async def up() -> bool:
        for kind, proc in started:
            assert proc.poll() is None, f"{kind} stopped:\n{process_output(folder, kind)}"
        try:
            return all([(await c.get("/healthz")).status_code == 200 for c in clients])
        except httpx.TransportError:
            return False

    await eventually(up, timeout=20, every=0.1)


async def _drive(web: httpx.AsyncClient, routing: httpx.AsyncClient) -> None:
    key = await Keys(web).key()
    caller = fresh_caller()
    posted = await web.get(
        "/data_writing", params={"key": key["key"], "caller_number": caller, "utm_source": "pf"}
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["status"] == STATUS_STORED

    connected = await routing.post("/calls", json={"caller_number": caller}, headers=ROUTING)
    assert connected.status_code == 201, connected.text
    call = connected.json()
    assert call["caller_number"] == caller
    assert call["state"] == "in_progress"
    assert call["tags"] == {"utm_source": "pf"}

    read = await routing.get(f"/calls/{call['call_uuid']}", headers=ROUTING)
    assert read.status_code == 200, read.text
    assert read.json() == call
    ended = await routing.post(f"/calls/{call['call_uuid']}/end", headers=ROUTING)
    assert ended.status_code == 200, ended.text
    assert ended.json()["state"] == "completed"
    assert ended.json()["tags"] == {"utm_source": "pf"}

    health = await routing.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    for path in NOT_ROUTING:
        refused = await routing.get(path, params={"key": key["key"]}, headers=ADMIN)
        assert refused.status_code == 404, (path, refused.text)
        assert refused.headers["content-type"].startswith("application/json"), path
        assert refused.json()["error"] == "not_found", (path, refused.text)
    # The web process serves what the routing process refuses.
    assert (await web.get("/openapi.json")).status_code == 200
