"""Settings, read once from the environment, then `.env`, then defaults.

Read the way starlette.config reads them, without importing Starlette: the workers
load these settings too, and import nothing of the web side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from calltags.autopipe import ReplicaAck
from calltags.errors import ConfigError
from calltags.models import MAX_KEY_SECONDS

# A REDIS_URL naming a Redis Cluster (any node of it): redis+cluster:// or rediss+cluster://
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
# A REDIS_URL naming the Sentinels of a primary: redis+sentinel:// or rediss+sentinel://
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379  # a Sentinel's port when the URL gives none
WRITE_ACKS = ("primary", "replica")
DEFAULT_IDEMPOTENCY_SECONDS = 86_400  # 1 day an idempotency key's first answer is replayed


class Secret:
    """A setting kept out of tracebacks and logs: its repr hides it, str() gives it."""

    def __init__(self, value: str):
        self._value = value

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}('**********')"

    def __str__(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)


class Config:
    """A setting's text: the environment's, else the `.env` file's, else the default."""

    def __init__(self, env_file: Path | None):
        self._file = _read_env_file(env_file) if env_file is not None else {}

    def __call__(self, name: str, default: str) -> str:
        value = os.environ.get(name)
        if value is not None:
            return value
        return self._file.get(name, default)


def _read_env_file(path: Path) -> dict[str, str]:
    """NAME=VALUE lines; blank lines, lines without "=" and `#` comments are skipped, and
    a value in matching quotes loses them."""
    values: dict[str, str] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if "=" in line and not line.startswith("#"):
                name, value = (part.strip() for part in line.split("=", 1))
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                values[name] = value
    return values


@dataclass(frozen=True)
class SentinelUrl:
    """`redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]`: the
    Sentinels that know the primary of SERVICE. USER and PASSWORD are the primary's (and
    its replicas'); the Sentinels are asked without. `rediss+` speaks TLS to both."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool

    def __repr__(self) -> str:  # no password in a traceback
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"SentinelUrl({hosts}/{self.service}/{self.db}, tls={self.tls})"


def sentinel_url(url: str, name: str) -> SentinelUrl:
    """The parts of a redis+sentinel:// URL; ConfigError naming the variable `name`."""
    scheme, _, rest = url.partition("://")
    if scheme + "://" not in SENTINEL_SCHEMES:
        raise ConfigError(f"{name} is not a redis+sentinel:// URL")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    service, _, db_text = path.partition("/")
    db_text = db_text.rstrip("/")
    sentinels: list[tuple[str, int]] = []
    for host_port in hosts.split(","):
        host, port = _host_port(host_port.strip(), name)
        sentinels.append((host, port))
    if not service or "?" in path or "/" in db_text:
        raise ConfigError(
            f"{name} must look like redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB],"
            f" got no service name or more than SERVICE/DB after the hosts"
        )
    try:
        db = int(db_text) if db_text else 0
    except ValueError as exc:
        raise ConfigError(f"{name}: the database after the service must be a number") from exc
    return SentinelUrl(
        sentinels=tuple(sentinels),
        service=unquote(service),
        db=db,
        username=unquote(user) or None,
        password=unquote(password) or None,
        tls=scheme == "rediss+sentinel",
    )


def _host_port(text: str, name: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPV6] or [IPV6]:PORT of a Sentinel."""
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else SENTINEL_PORT
    except ValueError as exc:
        raise ConfigError(f"{name}: Sentinel {text!r} has no valid port") from exc
    if not host or not 0 < port < 65536:
        raise ConfigError(f"{name}: Sentinel {text!r} needs a host and a port below 65536")
    return host, port


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    redis_cluster: bool
    queue_url: str | None  # the arq workers' queue; None: REDIS_URL (which must be one node)
    database_url: str | None
    port: int
    admin_token: Secret | None
    routing_token: Secret | None
    default_region: str
    redis_prefix: str
    log_shards: int
    log_max_backlog: int
    log_retention_days: int
    flush_batch: int
    flush_claim_idle_seconds: int
    call_ttl_seconds: int
    rate_limit: tuple[float, int] | None  # default per-key (tokens a second, burst); None: off
    key_failures_per_minute: int  # failed key attempts an address may make; 0: no limit
    signature_tolerance_seconds: int
    key_cache_seconds: float
    data_dir: Path
    web_concurrency: int
    public_url: str | None  # the base of the postback URLs handed to publishers
    write_ack: str = "primary"  # "primary": answered once the primary has it; "replica"
    write_replicas: int = 1  # with "replica": replicas that must hold a write
    write_ack_timeout_ms: int = 100  # with "replica": the longest a request waits for them
    idempotency_seconds: int = DEFAULT_IDEMPOTENCY_SECONDS  # the window of an idempotency key
    erasure_salt: Secret | None = None  # keys the hash an erase records; None: Postgres's
    webhook_timeout_seconds: float = 10.0  # a receiver's time to answer a delivery 2xx
    webhook_retry_base_seconds: float = 10.0  # the first wait before a retry, doubling after
    webhook_max_attempts: int = 15  # attempts of a delivery before it is failed
    webhook_disable_after: int = 50  # failed deliveries in a row disabling a webhook; 0: never
    webhook_allow_private: bool = False  # deliveries may go to loopback and private addresses

    @property
    def uses_cluster(self) -> bool:
        return self.redis_cluster or (self.redis_url or "").startswith(CLUSTER_SCHEMES)

    @property
    def replica_ack(self) -> ReplicaAck | None:
        """What writes wait for besides the primary; None: the primary alone."""
        if self.write_ack != "replica":
            return None
        return ReplicaAck(self.write_replicas, self.write_ack_timeout_ms)

    def arq_queue_url(self) -> str:
        """The single-node Redis of the workers' arq queue (arq cannot use a cluster)."""
        if self.queue_url:
            if self.queue_url.startswith(CLUSTER_SCHEMES):
                raise ConfigError("CALLTAGS_QUEUE_URL must name a single Redis node, not a cluster")
            return self.queue_url
        if self.uses_cluster:
            raise ConfigError(
                "CALLTAGS_QUEUE_URL is not set: REDIS_URL names a Redis Cluster, and the"
                " workers' arq queue needs a single Redis node"
            )
        return require(self.redis_url, "REDIS_URL")


_N = TypeVar("_N", int, float)


def _number(
    config: Config, name: str, default: _N, bounds: tuple[_N, _N], cast: type[_N], what: str
) -> _N:
    """The setting read with `cast` (`what` it must be), within `bounds`."""
    raw = config(name, default=str(default))
    try:
        value = cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from exc
    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _int(config: Config, name: str, default: int, low: int, high: int) -> int:
    return _number(config, name, default, (low, high), int, "a whole number")


def _seconds(config: Config, name: str, default: float, low: float, high: float) -> float:
    return _number(config, name, float(default), (low, high), float, "a number of seconds")


def _rate(raw: str) -> tuple[float, int] | None:
    """CALLTAGS_RATE_LIMIT: "RATE/BURST" (tokens a second / bucket size), "RATE", or "0"."""
    text = raw.strip().lower()
    if text in ("0", "off", ""):
        return None
    rate_text, _, burst_text = text.partition("/")
    try:
        rate = float(rate_text)
        burst = int(burst_text) if burst_text else max(1, int(rate))
    except ValueError as exc:
        raise ConfigError(
            f"CALLTAGS_RATE_LIMIT must look like 500/1000 (a second / burst), got {raw!r}"
        ) from exc
    if rate <= 0 or burst < 1:
        raise ConfigError("CALLTAGS_RATE_LIMIT needs a rate above 0 and a burst of 1 or more")
    return rate, burst


def _secret(config: Config, name: str) -> Secret | None:
    raw = config(name, default="")
    return Secret(raw) if raw else None


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    path = Path(env_file) if env_file is not None else None
    config = Config(path if path is not None and path.is_file() else None)
    region = config("CALLTAGS_DEFAULT_REGION", default="US").upper()
    import phonenumbers

    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"CALLTAGS_DEFAULT_REGION {region!r} is not a known region code")
    cache = config("CALLTAGS_KEY_CACHE_SECONDS", default="1.0")
    try:
        key_cache_seconds = float(cache)
    except ValueError as exc:
        raise ConfigError(f"CALLTAGS_KEY_CACHE_SECONDS must be a number, got {cache!r}") from exc
    if not 0 <= key_cache_seconds <= 1:
        raise ConfigError("CALLTAGS_KEY_CACHE_SECONDS must be between 0 and 1")
    redis_url = config("REDIS_URL", default="") or None
    redis_cluster = config("CALLTAGS_REDIS_CLUSTER", default="0").lower() in ("1", "true", "yes")
    queue_url = config("CALLTAGS_QUEUE_URL", default="") or None
    for name, url in (("REDIS_URL", redis_url), ("CALLTAGS_QUEUE_URL", queue_url)):
        if url is not None and url.startswith(SENTINEL_SCHEMES):
            sentinel_url(url, name)  # fails now, naming the variable, rather than at connect
    if redis_cluster and redis_url is not None and redis_url.startswith(SENTINEL_SCHEMES):
        raise ConfigError(
            "CALLTAGS_REDIS_CLUSTER=1 cannot be used with a redis+sentinel:// REDIS_URL"
        )
    write_ack = config("CALLTAGS_WRITE_ACK", default="primary").strip().lower()
    if write_ack not in WRITE_ACKS:
        raise ConfigError(f"CALLTAGS_WRITE_ACK must be primary or replica, got {write_ack!r}")
    return Settings(
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        queue_url=queue_url,
        database_url=config("DATABASE_URL", default="") or None,
        port=_int(config, "PORT", 8000, 1, 65535),
        admin_token=_secret(config, "CALLTAGS_ADMIN_TOKEN"),
        routing_token=_secret(config, "CALLTAGS_ROUTING_TOKEN"),
        default_region=region,
        redis_prefix=config("CALLTAGS_REDIS_PREFIX", default="ct:"),
        log_shards=_int(config, "CALLTAGS_LOG_SHARDS", 8, 1, 1024),
        log_max_backlog=_int(config, "CALLTAGS_LOG_MAX_BACKLOG", 1_000_000, 1, 10**9),
        # Days of postback log kept in Postgres; older day partitions are dropped.
        log_retention_days=_int(config, "CALLTAGS_LOG_RETENTION_DAYS", 90, 1, 36500),
        # Entries a worker moves into Postgres per batch (one COPY, one commit).
        flush_batch=_int(config, "CALLTAGS_FLUSH_BATCH", 1000, 1, 100_000),
        # Entries a worker read but did not acknowledge for this long (it died) are
        # taken over by another worker.
        flush_claim_idle_seconds=_int(config, "CALLTAGS_FLUSH_CLAIM_IDLE_SECONDS", 60, 1, 86400),
        call_ttl_seconds=_int(
            config, "CALLTAGS_CALL_TTL_SECONDS", MAX_KEY_SECONDS, 3600, 10 * MAX_KEY_SECONDS
        ),
        key_cache_seconds=key_cache_seconds,
        rate_limit=_rate(config("CALLTAGS_RATE_LIMIT", default="500/1000")),
        key_failures_per_minute=_int(config, "CALLTAGS_KEY_FAILURES_PER_MINUTE", 30, 0, 10**6),
        signature_tolerance_seconds=_int(
            config, "CALLTAGS_SIGNATURE_TOLERANCE_SECONDS", 300, 1, 86400
        ),
        data_dir=Path(config("CALLTAGS_DATA_DIR", default=".data")),
        web_concurrency=_int(config, "WEB_CONCURRENCY", 1, 1, 256),
        public_url=config("CALLTAGS_PUBLIC_URL", default="").rstrip("/") or None,
        write_ack=write_ack,
        # With CALLTAGS_WRITE_ACK=replica: replicas that must hold a write before it is
        # answered, and the longest one WAIT (one per auto-pipeline batch) waits, ms. WAIT
        # takes 0 as "forever", so the timeout starts at 1.
        write_replicas=_int(config, "CALLTAGS_WRITE_REPLICAS", 1, 1, 100),
        write_ack_timeout_ms=_int(config, "CALLTAGS_WRITE_ACK_TIMEOUT_MS", 100, 1, 60_000),
        # How long after its first use an idempotency key's postback is replayed, s.
        idempotency_seconds=_int(
            config, "CALLTAGS_IDEMPOTENCY_SECONDS", DEFAULT_IDEMPOTENCY_SECONDS, 1, MAX_KEY_SECONDS
        ),
        # The salt of the number hash each caller erase records (erasure.py); unset: the
        # salt migration 008 made in Postgres. The web processes and workers share it.
        erasure_salt=_secret(config, "CALLTAGS_ERASURE_SALT"),
        webhook_timeout_seconds=_seconds(config, "CALLTAGS_WEBHOOK_TIMEOUT_SECONDS", 10, 0.1, 60),
        webhook_retry_base_seconds=_seconds(
            config, "CALLTAGS_WEBHOOK_RETRY_BASE_SECONDS", 10, 0.01, 3600
        ),
        webhook_max_attempts=_int(config, "CALLTAGS_WEBHOOK_MAX_ATTEMPTS", 15, 1, 100),
        webhook_disable_after=_int(config, "CALLTAGS_WEBHOOK_DISABLE_AFTER", 50, 0, 10**6),
        webhook_allow_private=config("CALLTAGS_WEBHOOK_ALLOW_PRIVATE", default="0").lower()
        in ("1", "true", "yes"),
    )


def require(value: str | None, name: str) -> str:
    if not value:
        raise ConfigError(f"{name} is not set")
    return value
