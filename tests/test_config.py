from __future__ import annotations

import pytest

from calltags.autopipe import ReplicaAck
from calltags.config import load_settings, sentinel_url
from calltags.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "CALLTAGS_DEFAULT_REGION", "CALLTAGS_LOG_SHARDS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(env_file=None)
    assert settings.port == 8000
    assert settings.default_region == "US"
    assert settings.log_shards == 8
    assert settings.redis_url is None
    assert settings.key_cache_seconds == 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("CALLTAGS_DEFAULT_REGION", "XX"),
        ("CALLTAGS_LOG_SHARDS", "0"),
        ("CALLTAGS_KEY_CACHE_SECONDS", "5"),
        ("REDIS_URL", "redis+sentinel://10.0.0.1:26379"),  # no service
        ("REDIS_URL", "redis+sentinel://10.0.0.1:26379/main/zero"),
        ("REDIS_URL", "redis+sentinel://10.0.0.1:port/main"),
        ("CALLTAGS_QUEUE_URL", "redis+sentinel://:26379/main"),
        ("CALLTAGS_WRITE_ACK", "all"),
        ("CALLTAGS_WRITE_REPLICAS", "0"),
        ("CALLTAGS_WRITE_ACK_TIMEOUT_MS", "0"),  # WAIT's 0 waits forever
        ("CALLTAGS_IDEMPOTENCY_SECONDS", "0"),
        ("CALLTAGS_IDEMPOTENCY_SECONDS", "a day"),
    ],
)
def test_bad_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(env_file=None)


def test_cluster_url_implies_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://127.0.0.1:7000")
    monkeypatch.delenv("CALLTAGS_REDIS_CLUSTER", raising=False)
    assert load_settings(env_file=None).uses_cluster


def test_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    monkeypatch.delenv("CALLTAGS_DEFAULT_REGION", raising=False)
    env = tmp_path / ".env"
    env.write_text("CALLTAGS_DEFAULT_REGION=gb\n")
    assert load_settings(env_file=env).default_region == "GB"


def test_env_file_comments_quotes_and_the_environment_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    monkeypatch.delenv("CALLTAGS_REDIS_PREFIX", raising=False)
    monkeypatch.delenv("CALLTAGS_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("PORT", "9001")
    env = tmp_path / ".env"
    env.write_text(
        "# local run\n"
        "not a setting\n"
        " CALLTAGS_REDIS_PREFIX = 'dev:' \n"
        'CALLTAGS_ADMIN_TOKEN="s3cr=t"\n'
        "#PORT=1\n"
        "PORT=9000\n"
    )
    settings = load_settings(env_file=env)
    assert settings.redis_prefix == "dev:"
    assert settings.port == 9001  # the environment wins over the file
    assert str(settings.admin_token) == "s3cr=t"
    assert "s3cr" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db", "user", "password", "tls"),
    [
        (
            "redis+sentinel://10.0.0.1:26379/calltags",
            [("10.0.0.1", 26379)],
            "calltags",
            0,
            None,
            None,
            False,
        ),
        (
            "rediss+sentinel://app:s%40cret@a:1,b,[::1]:3/main/2",
            [("a", 1), ("b", 26379), ("::1", 3)],
            "main",
            2,
            "app",
            "s@cret",
            True,
        ),
    ],
)
def test_sentinel_urls(
    url: str,
    sentinels: list[tuple[str, int]],
    service: str,
    db: int,
    user: str | None,
    password: str | None,
    tls: bool,
) -> None:
    parts = sentinel_url(url, "REDIS_URL")
    assert (list(parts.sentinels), parts.service, parts.db) == (sentinels, service, db)
    assert (parts.username, parts.password, parts.tls) == (user, password, tls)
    assert "cret" not in repr(parts)


def test_write_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CALLTAGS_WRITE_ACK", "CALLTAGS_WRITE_REPLICAS", "CALLTAGS_WRITE_ACK_TIMEOUT_MS"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings(env_file=None).replica_ack is None
    monkeypatch.setenv("CALLTAGS_WRITE_ACK", "replica")
    assert load_settings(env_file=None).replica_ack == ReplicaAck(replicas=1, timeout_ms=100)
    monkeypatch.setenv("CALLTAGS_WRITE_REPLICAS", "2")
    monkeypatch.setenv("CALLTAGS_WRITE_ACK_TIMEOUT_MS", "250")
    assert load_settings(env_file=None).replica_ack == ReplicaAck(replicas=2, timeout_ms=250)


def test_idempotency_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLTAGS_IDEMPOTENCY_SECONDS", raising=False)
    assert load_settings(env_file=None).idempotency_seconds == 86_400
    monkeypatch.setenv("CALLTAGS_IDEMPOTENCY_SECONDS", "3600")
    assert load_settings(env_file=None).idempotency_seconds == 3600


def test_erasure_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLTAGS_ERASURE_SALT", raising=False)
    assert load_settings(env_file=None).erasure_salt is None  # Postgres's own salt then
    monkeypatch.setenv("CALLTAGS_ERASURE_SALT", "pepper")
    salt = load_settings(env_file=None).erasure_salt
    assert str(salt) == "pepper" and "pepper" not in repr(salt)
