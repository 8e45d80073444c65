"""Runtime settings, from environment variables prefixed STIXBUS_ (pydantic-settings).

Every field below is documented with its default; `stixbus settings` prints the effective values.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stixbus import REPO_ROOT


class Limits(BaseSettings):
    """Input limits at ingest; above any of them a submission is rejected, never truncated."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_LIMIT_")

    message_bytes: int = Field(default=4 * 1024 * 1024, description="Max bytes per ingest record")
    objects_per_bundle: int = Field(default=10_000, description="Max objects in one bundle")
    string_chars: int = Field(default=64 * 1024, description="Max characters in any JSON string")
    nesting_depth: int = Field(default=32, description="Max JSON nesting depth")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STIXBUS_")

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_prefix: str = Field(default="stixbus", description="Prefix of every stixbus topic name")
    partitions: int = Field(default=4, ge=1, description="Partitions of the pipeline topics")
    replication_factor: int = Field(default=1, ge=1, description="Replication of created topics")
    app_id: str = Field(default="stixbus", description="Faust app id (worker consumer group)")
    registry_path: Path = Field(
        default=REPO_ROOT / "deploy" / "orgs.yaml", description="Org registry YAML"
    )
    agreements_path: Path = Field(
        default=REPO_ROOT / "deploy" / "agreements.yaml", description="Sharing agreements YAML"
    )
    home: Path = Field(
        default=REPO_ROOT / ".stixbus", description="State folder: Kafka data, worker data, logs"
    )
    web_port: int = Field(default=6066, description="Worker HTTP port (/metrics, /healthz)")
    store: str = Field(default="rocksdb://", description="Faust table store (memory:// in tests)")
    limits: Limits = Field(default_factory=Limits)

    @property
    def worker_dir(self) -> Path:
        return self.home / "worker"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
