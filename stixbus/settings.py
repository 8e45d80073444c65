"""Runtime settings, from environment variables prefixed STIXBUS_ (pydantic-settings).

Every field below is documented with its default; `stixbus settings` prints the effective values.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from stixbus.core.payload import InputLimits
from stixbus.errors import ConfigError

# The default of `Settings.max_record_bytes`, for code that is handed no settings (tests' clients).
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024


class Limits(BaseSettings, InputLimits):
    """`InputLimits` (stixbus/core/payload.py) read from STIXBUS_LIMIT_* variables."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_LIMIT_")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STIXBUS_")

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_prefix: str = Field(default="stixbus", description="Prefix of every stixbus topic name")
    partitions: int = Field(default=4, ge=1, description="Partitions of the pipeline topics")
    replication_factor: int = Field(default=1, ge=1, description="Replication of created topics")
    app_id: str = Field(default="stixbus", description="Faust app id (worker consumer group)")
    deploy_dir: Path = Field(
        default=Path("deploy"),
        description="Deployment folder (registry, agreements, kafka.sh, demo, connector examples)",
    )
    registry_path: Path = Field(
        default_factory=lambda data: data["deploy_dir"] / "orgs.yaml",
        description="Org registry YAML (default <deploy_dir>/orgs.yaml)",
    )
    agreements_path: Path = Field(
        default_factory=lambda data: data["deploy_dir"] / "agreements.yaml",
        description="Sharing agreements YAML (default <deploy_dir>/agreements.yaml)",
    )
    home: Path = Field(
        default=Path(".stixbus"), description="State folder: Kafka data, worker data, logs"
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description=(
            "Hex secret keying pseudonyms (>= 32 hex digits); unset: "
            "<home>/secrets/pseudonym.key, generated at first start"
        ),
    )
    record_time_skew_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Ingest record timestamps further than this from the receive time are replaced by "
            "the receive time (a backdated timestamp would become the minted created)"
        ),
    )
    web_port: int = Field(default=6066, description="Worker HTTP port (/metrics, /healthz)")
    web_host: str = Field(
        default="127.0.0.1", description="Worker HTTP bind address (0.0.0.0 inside containers)"
    )
    store: str = Field(default="rocksdb://", description="Faust table store (memory:// in tests)")
    max_record_bytes: int = Field(
        default=DEFAULT_MAX_RECORD_BYTES,
        description=(
            "Largest record on a stixbus topic (topic max.message.bytes and the worker's producer "
            "limit): must hold a full ingest submission, its dead letter and its receipt"
        ),
    )
    confidence_step: int = Field(
        default=10, ge=1, description="Confidence change that warrants re-delivery"
    )
    expiry_scan_seconds: float = Field(
        default=5.0, gt=0, description="How often the worker looks for expired indicators"
    )
    dedup_grace_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="Keep a fully revoked/expired key this long before removing its state",
    )
    limits: Limits = Field(default_factory=Limits)

    # Write path of the worker (docs/performance.md).  Kafka's defaults (linger 0, 16 KiB batches)
    # send one tiny produce request per record; the route agent's ~10 records per input made that
    # most of the worker's time.
    producer_linger_ms: float = Field(
        default=5.0, ge=0, description="Producer linger: wait this long to fill a batch (ms)"
    )
    producer_batch_bytes: int = Field(
        default=1 << 20, ge=16384, description="Producer batch size per partition (bytes)"
    )
    producer_compression: Literal["none", "gzip"] = Field(
        default="none",
        description="Producer compression (none: broker and worker share the host, CPU is scarcer "
        "than bandwidth; gzip for a remote broker)",
    )
    route_batch_max: int = Field(
        default=500, ge=1, description="Route agent: events processed per batch at most"
    )
    route_batch_seconds: float = Field(
        default=0.005, gt=0, description="Route agent: wait at most this long to fill a batch (s)"
    )
    companion_refresh_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Companion objects (bus identity, marking definitions) go to a subscriber "
        "once, again when they change, and again after this long (so they stay within retention)",
    )

    # Kafka client security (docs/security.md).  Credentials come from the environment or from
    # files, never from the command line.  The local stack writes <home>/secrets/client.env with
    # the first four of these; real STIXBUS_* environment variables override that file.
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol (SASL_SSL on the local stack)"
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism"
    )
    sasl_username: str | None = Field(
        default=None, description="SASL user; unset: the principal the command acts as"
    )
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; unset: looked up in credentials_file"
    )
    ssl_cafile: Path | None = Field(
        default=None, description="PEM CA bundle that signed the broker certificate"
    )
    credentials_file: Path | None = Field(
        default=None,
        description='JSON {"users": {principal: password}} (mode 600), written by the local stack',
    )

    @property
    def worker_dir(self) -> Path:
        return self.home / "worker"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


DEFAULT_HOME = Path(".stixbus")


def client_env_file(home: Path | None = None) -> Path:
    """The connection settings the local Kafka script writes (deploy/kafka/kafka.sh)."""
    home = home or Path(os.environ.get("STIXBUS_HOME") or DEFAULT_HOME)
    return home / "secrets" / "client.env"


def load_settings() -> Settings:
    """Settings from STIXBUS_* env vars, then <STIXBUS_HOME>/secrets/client.env, then defaults."""
    env_file = client_env_file()
    try:
        if env_file.is_file():
            return Settings(_env_file=env_file)
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"STIXBUS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
            if e["type"] != "default_factory_not_called"  # a consequence, not a cause
        )
        where = f" or in {env_file}" if env_file.is_file() else ""
        raise ConfigError(
            f"invalid settings: {problems}",
            f"fix the environment variable{where} (stixbus/settings.py documents each setting)",
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
