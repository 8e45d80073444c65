"""Runtime settings, from environment variables prefixed STIXBUS_ (pydantic-settings).

Every field below is documented with its default; `stixbus settings` prints the effective values.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stixbus.core.decay import DEFAULT_LIFETIMES
from stixbus.core.guard import CHOSEN_LISTS
from stixbus.core.payload import InputLimits
from stixbus.errors import ConfigError

# The default of `Settings.max_record_bytes`, for code that is handed no settings (tests' clients).
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024


class Limits(BaseSettings, InputLimits):
    """`InputLimits` (stixbus/core/payload.py) read from STIXBUS_LIMIT_* variables."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_LIMIT_")


DAY = 24 * 3600.0


class Retention(BaseSettings):
    """How long each topic keeps its records (STIXBUS_RETENTION_*; docs/operations.md lists
    every topic).  Compacted topics keep the latest record per key for ever; their settings
    only bound how long a superseded record or a tombstone lingers."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_RETENTION_")

    ingest_seconds: float = Field(default=7 * DAY, gt=0, description="ingest.<org> topics")
    receipts_seconds: float = Field(default=7 * DAY, gt=0, description="receipts.<org> topics")
    pipeline_seconds: float = Field(
        default=7 * DAY, gt=0, description="normalized, claims and ticks (between stages)"
    )
    deadletter_seconds: float = Field(default=30 * DAY, gt=0, description="the dead letters")
    audit_seconds: float = Field(
        default=7 * 365 * DAY, gt=0, description="the audit trail (years: regulators ask)"
    )
    compacted_delete_retention_seconds: float = Field(
        default=30 * DAY,
        ge=0,
        description="Compacted topics (deliver.<org>, agreements, markings, changelogs): how "
        "long a tombstone stays readable (delete.retention.ms)",
    )
    compacted_min_lag_seconds: float = Field(
        default=0,
        ge=0,
        description="min.compaction.lag.ms of compacted topics (0: the broker's default)",
    )
    compaction_dirty_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="min.cleanable.dirty.ratio of compacted topics (unset: the broker's 0.5)",
    )
    segment_seconds: float | None = Field(
        default=None,
        gt=0,
        description="segment.ms of every topic (unset: the broker's default of 7 days); "
        "tests shorten it so retention and compaction act within seconds",
    )


MIB = 1024 * 1024


class QuotaDefaults(BaseSettings):
    """Kafka client quotas of every org principal (STIXBUS_QUOTA_*; docs/security.md, "Quotas").

    Applied per broker by `stixbus security apply` (and the Strimzi KafkaUsers); an org's
    `quotas` in the registry override them.  0 means no quota of that kind.  The bus principals
    (worker, egress, operator, admin) get none.
    """

    model_config = SettingsConfigDict(env_prefix="STIXBUS_QUOTA_")

    producer_bytes_per_second: int = Field(
        default=8 * MIB,
        ge=0,
        description="producer_byte_rate: twice the largest submission (4 MiB) per second",
    )
    consumer_bytes_per_second: int = Field(
        default=16 * MIB, ge=0, description="consumer_byte_rate (receipts and deliveries)"
    )
    request_percentage: int = Field(
        default=100,
        ge=0,
        description="request_percentage: one broker thread's time per quota window, at most",
    )


class ConnectionBounds(BaseModel):
    """The connection bounds of an HTTP server served through stixbus/http.py `listen` (its
    `ServerLimits`): the TAXII server (STIXBUS_TAXII_*) and the TAXII inbox (its YAML config,
    connectors/inbox.py) share them, names and defaults included."""

    idle_timeout_seconds: float = Field(
        default=30, gt=0, description="Close a connection with no complete request this long"
    )
    header_timeout_seconds: float = Field(
        default=10, gt=0, description="Close a connection whose request headers take longer"
    )
    max_connections: int = Field(
        default=256, ge=1, description="Open connections at most; more get 503 and are closed"
    )


class TaxiiServer(BaseSettings, ConnectionBounds):
    """The subscribers' TAXII 2.1 server (STIXBUS_TAXII_*; docs/taxii.md)."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_TAXII_")

    host: str = Field(default="127.0.0.1", description="Bind address")
    port: int = Field(default=6444, ge=0, le=65535, description="HTTPS (or HTTP) port")
    public_url: str | None = Field(
        default=None,
        description="Base URL clients use (behind a proxy); default scheme://host:port",
    )
    api_root: str = Field(default="feeds", pattern=r"^[a-z0-9-]{1,40}$", description="API root")
    credentials_file: Path | None = Field(
        default=None,
        description="Hashed credentials; default <home>/secrets/taxii-credentials.yaml",
    )
    tls: bool | None = Field(
        default=None, description="Serve HTTPS (default: when the Kafka connection uses TLS)"
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate; default <home>/secrets/taxii.pem (local CA)"
    )
    tls_key: Path | None = Field(
        default=None, description="PEM key; default <home>/secrets/taxii.key"
    )
    client_ca: Path | None = Field(
        default=None,
        description="PEM CA of client certificates: set, a client certificate is requested and "
        "one signed by it authenticates as the org named by its CN",
    )
    page_max: int = Field(default=1000, ge=1, description="Largest `limit` a page may have")
    page_default: int = Field(default=500, ge=1, description="`limit` when the client gives none")
    requests_per_minute: int = Field(
        default=600, ge=1, description="Requests per org per minute; more get 429"
    )
    auth_attempts_per_minute: int = Field(
        default=20, ge=1, description="Password/token checks per username or token id per minute"
    )
    request_timeout_seconds: float = Field(default=30, gt=0, description="A request's deadline")
    settle_seconds: float = Field(
        default=1.0,
        ge=0,
        description="A record appended less than this before the server last caught up with its "
        "topic is not served yet (allowance for the broker's and this host's clocks; it keeps "
        "date_added order exact)",
    )


class SinkSettings(BaseSettings):
    """The network sinks: RPZ, firewall lists, Suricata/Zeek files, MISP feed (STIXBUS_SINKS_*;
    docs/sinks.md).  Per-subscriber choices (formats, RPZ action, TSIG key) are in `config`."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_SINKS_")

    config: Path | None = Field(
        default=None, description="Per-subscriber sinks YAML; default <deploy_dir>/sinks.yaml"
    )
    dir: Path | None = Field(
        default=None, description="Folder the files are written to; default <home>/sinks"
    )
    orgs: str = Field(default="", description="Comma-separated subscribers to serve; empty: all")
    host: str = Field(
        default="127.0.0.1", description="Bind address of the HTTP(S) and DNS servers"
    )
    http_port: int = Field(default=6445, ge=0, le=65535, description="HTTPS lists and MISP feed")
    dns_port: int = Field(default=6453, ge=0, le=65535, description="RPZ zone transfers (TCP+UDP)")
    debounce_seconds: float = Field(
        default=0.3, ge=0, description="Wait this long after a change before re-rendering"
    )
    max_change: float = Field(
        default=0.5, gt=0, description="Safety: refuse a list that shrank/grew by more than this"
    )
    min_entries: int = Field(
        default=100, ge=0, description="Safety: lists smaller than this are not checked"
    )
    hold_seconds: float = Field(
        default=0, ge=0, description="Safety: publish a held change after this long (0: never)"
    )
    tls: bool | None = Field(
        default=None, description="Serve HTTPS (default: when tls_cert and tls_key are set)"
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate of the HTTPS server")
    tls_key: Path | None = Field(default=None, description="PEM key of the HTTPS server")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STIXBUS_")

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_prefix: str = Field(default="stixbus", description="Prefix of every stixbus topic name")
    partitions: int = Field(default=4, ge=1, description="Partitions of the pipeline topics")
    replication_factor: int = Field(
        default=1,
        ge=1,
        description=(
            "Replication factor of the topics `stixbus topics` creates: 1 for the single local "
            "broker, 3 on a cluster (kafka.sh cluster writes 3 into client.env)"
        ),
    )
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description=(
            "min.insync.replicas of created topics (with the producers' acks=all: how many "
            "copies a write needs); unset: 1 below replication factor 3, else 2"
        ),
    )
    table_standby_replicas: int = Field(
        default=1,
        ge=0,
        description=(
            "Standby copies of each worker table partition kept warm by the other workers of the "
            "group (Faust table_standby_replicas), so a failover need not replay the changelog"
        ),
    )
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
    # Ingest isolation (docs/normalise.md, "Isolation"): the CPU-heavy checks run in a pool.
    validation_workers: int = Field(
        default=2,
        ge=1,
        description="Processes checking submissions with the official pattern grammar or the "
        "OASIS validator (off the worker's event loop)",
    )
    validation_budget_seconds: float = Field(
        default=20.0,
        gt=0,
        description="CPU-heavy checks of one submission past this are stopped and the "
        "submission rejected (validation_timeout)",
    )
    validation_in_flight_per_publisher: int = Field(
        default=1,
        ge=1,
        description="Heavy submissions of one publisher checked at the same time (the rest "
        "wait), so one publisher cannot take every validation process",
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
    expiry_horizon_seconds: float = Field(
        default=24 * 3600.0,
        gt=0,
        description=(
            "The in-memory expiry index holds only the keys due within this horizon (its memory "
            "is bounded by the keys due soon, not by the table); the worker re-reads the local "
            "table's deadline headers when a quarter of it is left.  Must be above "
            "expiry_scan_seconds"
        ),
    )
    dedup_grace_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="Keep a fully revoked/expired key this long before removing its state",
    )
    feedback_window_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Aggregated sightings and false-positive opinions to a producer: at most one new "
            "version per producer object per this many seconds (later reports are coalesced)"
        ),
    )
    limits: Limits = Field(default_factory=Limits)
    quota: QuotaDefaults = Field(default_factory=QuotaDefaults)
    retention: Retention = Field(default_factory=Retention)
    taxii: TaxiiServer = Field(default_factory=TaxiiServer)

    # False-positive guard and decay (docs/feedback.md).
    guard_enabled: bool = Field(
        default=True, description="Deny warninglisted observables (warninglist:<list>)"
    )
    guard_lists: list[str] = Field(
        default_factory=lambda: list(CHOSEN_LISTS),
        description="MISP warninglists the guard loads (directory names in pymispwarninglists)",
    )
    decay_ip_seconds: float = Field(
        default=DEFAULT_LIFETIMES["ipv4-addr"],
        ge=0,
        description="Default lifetime of IP indicators without valid_until (0: never)",
    )
    decay_domain_seconds: float = Field(
        default=DEFAULT_LIFETIMES["domain-name"],
        ge=0,
        description="Default lifetime of domain indicators without valid_until (0: never)",
    )
    decay_url_seconds: float = Field(
        default=DEFAULT_LIFETIMES["url"],
        ge=0,
        description="Default lifetime of URL indicators without valid_until (0: never)",
    )
    decay_email_seconds: float = Field(
        default=DEFAULT_LIFETIMES["email-addr"],
        ge=0,
        description="Default lifetime of email-address indicators without valid_until (0: never)",
    )
    decay_hash_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Default lifetime of file-hash indicators without valid_until (0: never)",
    )

    @property
    def decay_lifetimes(self) -> dict[str, float]:
        """Seconds per observable type for stixbus.core.decay.DecayPolicy.from_seconds."""
        return {
            "ipv4-addr": self.decay_ip_seconds,
            "ipv6-addr": self.decay_ip_seconds,
            "domain-name": self.decay_domain_seconds,
            "url": self.decay_url_seconds,
            "email-addr": self.decay_email_seconds,
            "file": self.decay_hash_seconds,
        }

    # Recovery after a crash (docs/runbook.md, docs/performance.md "State, memory and recovery").
    static_membership: bool = Field(
        default=True,
        description=(
            "Join the consumer group as a static member (Kafka group.instance.id): a worker "
            "restarted after a crash takes its partitions back at once instead of waiting out "
            "the dead member's session"
        ),
    )
    group_instance_id: str | None = Field(
        default=None,
        description=(
            "The worker's static member id, unique per worker; unset: generated at first start "
            "and kept in <home>/worker/instance-id (one home per worker)"
        ),
    )
    session_timeout_seconds: float = Field(
        default=20.0,
        ge=6,
        le=90,
        description=(
            "Consumer group session: how long a worker that stops heartbeating (lost, not "
            "restarted) keeps its partitions before the others take them over"
        ),
    )
    heartbeat_interval_seconds: float = Field(
        default=2.0, gt=0, description="Consumer group heartbeat (under a third of the session)"
    )
    broker_error_log_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "While the broker is unreachable the worker logs one plain 'broker unreachable' "
            "line at most this often, instead of every Kafka client error"
        ),
    )
    bulk_restore_min_records: int = Field(
        default=20_000,
        ge=0,
        description=(
            "Before Faust starts, a table partition whose local store is more than this many "
            "changelog records behind is restored with librdkafka in large batches "
            "(much faster than Faust's own recovery); 0 restores every gap this way"
        ),
    )
    bulk_restore_processes: int = Field(
        default=0,
        ge=0,
        description=(
            "Table partitions restored at once by the bulk restore, one process each; "
            "0: all of them (the copy waits on fetches and RocksDB more than on the CPU)"
        ),
    )
    recovery_buffer_records: int = Field(
        default=1_000,
        ge=1,
        description=(
            "Changelog records a table applies to its local store in one write batch during "
            "Faust's own recovery (its recovery_buffer_size, same default; large gaps go "
            "through the bulk restore instead)"
        ),
    )

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
    fast_producer: bool = Field(
        default=True,
        description="Route agent: write deliveries, audit, dead letters and receipts with a "
        "librdkafka producer (acks=all, idempotent, murmur2; stixbus/kafka/fast_producer.py) "
        "instead of Faust's; same linger/batch/compression settings",
    )
    producer_delivery_timeout_ms: int = Field(
        default=120_000,
        ge=1000,
        description="Fast producer: a record the broker has not acknowledged after this long "
        "fails its batch (DeliveryFailed: the worker stops uncommitted and its restart replays "
        "the batch) instead of holding the agent (librdkafka's message.timeout.ms, 300 s by "
        "default); it also logs every 10 s while a batch waits",
    )
    stall_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Stall watchdog (agents/stall.py): records that wait this long on a "
        "partition the worker owns while its committed offset does not move (outside a "
        "rebalance, with the broker answering) stop the worker, so that its restart reads them "
        "again; 0 turns it off.  Above the producer delivery timeout and the validation budget",
    )
    stall_check_seconds: float = Field(
        default=5.0, gt=0, description="Stall watchdog: how often it compares offsets (s)"
    )
    route_batch_max: int = Field(
        default=500, ge=1, description="Route agent: events processed per batch at most"
    )
    route_batch_seconds: float = Field(
        default=0.005, gt=0, description="Route agent: wait at most this long to fill a batch (s)"
    )
    feedback_index_batch_max: int = Field(
        default=500,
        ge=1,
        description="Feedback index agent: audit records read per batch at most; the batch's "
        "deliveries go to `feedback` as one record per partition, not one per delivery",
    )
    feedback_index_batch_seconds: float = Field(
        default=0.05,
        gt=0,
        description="Feedback index agent: wait at most this long to fill a batch (s); it delays "
        "the index by as much (a report in that time may be rejected: send it again)",
    )
    companion_refresh_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Companion objects (bus identity, marking definitions) go to a subscriber "
        "once, again when they change, and again after this long (so they stay within retention)",
    )
    sinks: SinkSettings = Field(default_factory=SinkSettings)

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

    @model_validator(mode="after")
    def _insync_fits_replication(self) -> Settings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"min_insync_replicas={self.min_insync_replicas} is above replication_factor="
                f"{self.replication_factor}: no write could ever succeed; lower "
                "STIXBUS_MIN_INSYNC_REPLICAS or raise STIXBUS_REPLICATION_FACTOR"
            )
        return self

    @property
    def insync_replicas(self) -> int:
        """The min.insync.replicas topics are created with (see `min_insync_replicas`)."""
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return 1 if self.replication_factor < 3 else 2

    @model_validator(mode="after")
    def _horizon_above_scan(self) -> Settings:
        if self.expiry_horizon_seconds <= self.expiry_scan_seconds:
            raise ValueError(
                f"expiry_horizon_seconds ({self.expiry_horizon_seconds}) must be above "
                f"expiry_scan_seconds ({self.expiry_scan_seconds}): the index would hold no key "
                "past the next scan"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Settings:
        if self.heartbeat_interval_seconds * 3 > self.session_timeout_seconds:
            raise ValueError(
                f"heartbeat_interval_seconds ({self.heartbeat_interval_seconds}) must be at most a "
                f"third of session_timeout_seconds ({self.session_timeout_seconds})"
            )
        return self

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
