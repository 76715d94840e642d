"""The `calltags` command, run as a user runs it: a subprocess on the test run's stores."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import ADMIN, fresh_caller

from calltags.config import Settings

_CLEARED = ("REDIS_URL", "DATABASE_URL", "PORT", "CALLTAGS_")


class Cli:
    def __init__(self, settings: Settings, folder: Path):
        assert settings.redis_url is not None
        assert settings.database_url is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
        env.update(
            REDIS_URL=settings.redis_url,
            DATABASE_URL=settings.database_url,
            CALLTAGS_REDIS_PREFIX=settings.redis_prefix,
            CALLTAGS_DATA_DIR=str(folder / "data"),
            PORT="8123",
        )
        self.env = env
        self.folder = folder  # the working directory: no stray .env is read

    async def run(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "calltags",
            *args,
            env=self.env,
            cwd=self.folder,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        code = process.returncode
        assert code is not None
        stdout, stderr = out.decode(), err.decode()
        if ok:
            assert code == 0, (args, stdout, stderr)
        return code, stdout, stderr


def leading_json(text: str) -> dict[str, Any]:
    """The JSON object the command printed first."""
    value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    assert isinstance(value, dict), text
    return value


@pytest.fixture
def cli(settings: Settings, tmp_path: Path) -> Cli:
    return Cli(settings, tmp_path)


async def status_within(
    client: httpx.AsyncClient, secret: str, status: int, deadline_s: float = 1.1
) -> None:
    """A postback with `secret` answers `status` within `deadline_s` seconds."""
    caller = fresh_caller()
    started = time.monotonic()
    while True:
        sent = time.monotonic() - started  # a slow answer does not count against the second
        response = await client.get(
            "/data_writing", params={"key": secret, "caller_number": caller, "a": "1"}
        )
        if response.status_code == status:
            return
        assert sent <= deadline_s, response.text
        await asyncio.sleep(0.05)


async def test_publisher_and_key_lifecycle(cli: Cli, client: httpx.AsyncClient) -> None:
    _, out, _ = await cli.run("publisher", "create", "CLI Leads")
    publisher = leading_json(out)
    assert publisher["name"] == "CLI Leads"
    publisher_id = publisher["id"]
    assert f"calltags key create --publisher {publisher_id}" in out

    _, out, _ = await cli.run(
        "key",
        "create",
        "--publisher",
        str(publisher_id),
        "--name",
        "web form",
        "--cutoff",
        "120",
        "--storage",
        "600",
    )
    key = leading_json(out)
    assert key["publisher_id"] == publisher_id
    assert key["name"] == "web form"
    assert key["end_call_cutoff_seconds"] == 120
    assert key["storage_duration_seconds"] == 600
    assert "key" not in key

    found = re.search(r"^key \(shown once, store it now\): (ct_\S+)$", out, re.MULTILINE)
    assert found, out
    secret = found.group(1)
    assert secret.startswith(key["key_prefix"])

    # A ready-to-send example URL, carrying the key.
    urls = re.findall(r"https?://[^\s']+", out)
    assert len(urls) == 1, out
    url = urlsplit(urls[0])
    assert url.netloc == "localhost:8123"
    assert url.path == "/data_writing"
    query = parse_qs(url.query)
    assert query["key"] == [secret]
    assert query["caller_number"]
    response = await client.get(f"{url.path}?{url.query}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "call not found, tags stored"

    # The admin API sees the same key.
    response = await client.get(f"/admin/publishers/{publisher_id}/keys", headers=ADMIN)
    assert [item["id"] for item in response.json()["items"]] == [key["id"]]

    _, out, _ = await cli.run("key", "list", "--publisher", str(publisher_id))
    assert secret not in out
    assert secret[len(key["key_prefix"]) :] not in out
    (line,) = out.strip().splitlines()
    assert line.split()[:3] == [str(key["id"]), "active", key["key_prefix"] + "..."]
    assert "web form" in line
    assert "cutoff=120s" in line
    assert "storage=600s" in line

    _, out, _ = await cli.run("key", "pause", str(key["id"]))
    assert leading_json(out)["paused"] is True
    await status_within(client, secret, 403)
    _, out, _ = await cli.run("key", "list", "--publisher", str(publisher_id))
    assert out.split()[1] == "paused"

    _, out, _ = await cli.run("key", "resume", str(key["id"]))
    assert leading_json(out)["paused"] is False
    await status_within(client, secret, 200)

    _, out, _ = await cli.run("key", "revoke", str(key["id"]))
    assert leading_json(out)["revoked"] is True
    await status_within(client, secret, 401)
    _, out, _ = await cli.run("key", "list", "--publisher", str(publisher_id))
    assert out.split()[1] == "revoked"
    assert secret not in out


async def test_cli_errors_are_messages(cli: Cli) -> None:
    code, _, err = await cli.run(
        "key", "create", "--publisher", "999999999", "--name", "x", ok=False
    )
    assert code != 0
    assert "no publisher with id 999999999" in err
    assert "Traceback" not in err

    code, _, err = await cli.run("key", "pause", "999999999", ok=False)
    assert code != 0
    assert "no usable key with id 999999999" in err
    assert "Traceback" not in err

    code, _, err = await cli.run("key", "list", "--publisher", "999999999", ok=False)
    assert code != 0
    assert "no publisher with id 999999999" in err


async def test_publisher_list(cli: Cli, client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/publishers", json={"name": "Listed Media"}, headers=ADMIN)
    publisher = response.json()
    _, out, _ = await cli.run("publisher", "list")
    listed, _ = json.JSONDecoder().raw_decode(out.lstrip())
    assert publisher in listed


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("publisher", "create", ""), "name"),
        (("publisher", "create", "   "), "name"),
        (("key", "create", "--publisher", "1", "--name", "x", "--cutoff", "-1"), "cutoff"),
        (("key", "create", "--publisher", "1", "--name", "x", "--storage", "59"), "storage"),
        (("key", "rotate", "1", "--grace", "2592001"), "grace_seconds"),
    ],
)
async def test_cli_validates_through_the_api_models(
    cli: Cli, args: tuple[str, ...], field: str
) -> None:
    code, _, err = await cli.run(*args, ok=False)
    assert code != 0
    assert field in err, err
    assert "Traceback" not in err
