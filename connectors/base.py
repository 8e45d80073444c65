"""Plumbing every connector shares: config, secrets, state, HTTP with retries, batched publishing.

A connector turns a source into ordinary submissions on `stixbus.ingest.<org>` through
`stixbus.kafka.client.publish`, so receipts, normalisation and routing apply unchanged.

Delivery contract (every connector):
- state is written atomically (temp file + fsync + `os.replace`), so a crash leaves the old or
  the new state, never a torn file;
- a unit of work (a TAXII page, a MISP event, a blocklist entry) is marked done in the state only
  after the broker acknowledged the submission that carried it, so a restart never skips one;
- submission ids are derived from the payload (UUIDv5 over its SHA-256), and connectors mint
  deterministic STIX ids and versions, so the rare re-send after a crash between "acknowledged"
  and "state written" is an identical `(id, modified)` the bus and its consumers drop.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse
from urllib3.util.retry import Retry

from schemas.envelope import Reason, Rejection
from schemas.org import Org, load_registry
from schemas.yaml_file import read_yaml
from stixbus.core.ids import uuid5
from stixbus.errors import ConfigError, NotFound, StixbusError
from stixbus.files import atomic_write
from stixbus.kafka.client import Published, publish
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings

# Namespace of every UUIDv5 a connector mints (STIX ids, submission ids).  Never change it:
# ids derived from it are how re-reads avoid minting new objects.
CONNECTOR_NAMESPACE = uuid.UUID("0d3f8a52-6a1c-4a8e-9a53-2b7c3f1e5a10")

# The broker's default `message.max.bytes` is 1 MiB (1,048,588 bytes); ingest topics made by
# `stixbus topics` take `Limits.message_bytes` (4 MiB), older or hand-made ones may not.  Stay
# under both by default.
BROKER_DEFAULT_MAX_BYTES = 1_000_000

T = TypeVar("T")


class ConnectorError(StixbusError):
    """A failure the analyst can act on: names the input, the rule broken and what to do."""

    fix = "see docs/connectors.md"


class ConnectorConfigError(ConnectorError, ConfigError):
    """A connector config (or the registry entry it names) is unreadable or invalid."""

    fix = "fix the config and run the connector again (examples: deploy/connectors/)"


class SourceUnavailable(ConnectorError):
    """The source could not be read (network, HTTP 5xx/429 after retries, missing file)."""


class SourceAuthError(ConnectorError):
    """The source refused our credentials (HTTP 401/403): retrying will not help."""


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- config -------------------------------------------------------------------------------


class ConnectorConfig(BaseModel):
    """Fields every connector config has (YAML, validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    connector: str = Field(description="Connector kind: taxii, misp, blocklist or inbox")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Stable source name: part of minted ids and of the default state file name",
    )
    state_file: Path | None = Field(
        default=None, description="Cursor/state JSON; default <STIXBUS_HOME>/connectors/<name>.json"
    )
    interval_seconds: float = Field(default=300, gt=0, description="Poll interval without --once")
    max_submission_bytes: int = Field(
        default=BROKER_DEFAULT_MAX_BYTES,
        ge=16_384,
        description="Max bytes of one bundle submission (capped at the bus's message limit)",
    )

    def state_path(self, settings: Settings) -> Path:
        return self.state_file or settings.home / "connectors" / f"{self.name}.json"


class PullConfig(ConnectorConfig):
    """A connector that reads one source and publishes as one org."""

    org: str = Field(description="Publishing org id (deploy/orgs.yaml); writes its ingest topic")


def secret_from_env(var: str | None, what: str) -> str | None:
    """Read a secret named by a `*_env` config field; None when no variable is configured."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConnectorError(
            f"{what}: environment variable {var} is empty or unset — export it before running"
        )
    return value


C = TypeVar("C", bound=ConnectorConfig)


def load_config(path: Path, model: type[C], kind: str) -> C:
    """Read a YAML connector config and validate it; errors name the file and the field."""
    try:
        data = read_yaml(path, "connector config")
    except ConfigError as exc:
        raise ConnectorConfigError(exc.what, exc.fix) from exc
    if not isinstance(data, dict):
        raise ConnectorConfigError(f"connector config {path} must be a YAML mapping of settings")
    data.setdefault("connector", kind)
    if data["connector"] != kind:
        raise ConnectorConfigError(
            f"connector config {path} is for {data['connector']!r}, not {kind!r}: "
            f"run `stixbus connector run {data['connector']} --config {path}`"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConnectorConfigError(f"connector config {path} is invalid: {problems}") from None


def resolve_org(settings: Settings, org_id: str) -> Org:
    registry = load_registry(settings.registry_path)
    try:
        org = registry.get(org_id)
    except NotFound as exc:
        raise ConnectorConfigError(exc.what, exc.fix) from None
    if not org.publishes:
        raise ConnectorConfigError(
            f"org {org_id!r} has no publisher role in {settings.registry_path}: "
            "a connector publishes, so pick a publishing org"
        )
    return org


# -- state --------------------------------------------------------------------------------


class StateFile:
    """A JSON document on disk, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConnectorError(f"cannot read state file {self.path}: {exc.strerror}") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConnectorError(
                f"state file {self.path} is not valid JSON ({exc}): restore it from backup or "
                "delete it to start over (a fresh state re-publishes the whole source)"
            ) from exc
        if not isinstance(data, dict):
            raise ConnectorError(f"state file {self.path} must hold a JSON object")
        return data

    def save(self, data: dict[str, Any]) -> None:
        atomic_write(self.path, orjson.dumps(data))


# -- HTTP with retries --------------------------------------------------------------------


RETRY_STATUSES = frozenset({429, *range(500, 600)})


@dataclass(frozen=True)
class RetryPolicy:
    """How a connector's HTTP session retries: 429/5xx answers and connection/read errors, with
    exponential backoff (base_delay · 2^n, capped at max_delay) or the server's Retry-After."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def retry(self) -> Retry:
        return _CappedRetry(
            total=self.attempts - 1,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.base_delay,
            backoff_max=self.max_delay,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last answer comes back; `source_errors` names it
        )


class _CappedRetry(Retry):
    """urllib3's `Retry` with the server's Retry-After capped at `backoff_max`: a source must not
    park the connector for a day."""

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.backoff_max)


def retrying_session(
    policy: RetryPolicy, session: requests.Session | None = None
) -> requests.Session:
    """`session` (or a new one) with urllib3's `Retry` for `policy` mounted on http(s)://."""
    sess = session or requests.Session()
    adapter = HTTPAdapter(max_retries=policy.retry())
    sess.mount("https://", adapter)
    sess.mount("http://", adapter)
    return sess


def source_errors(what: str, call: Callable[[], T], policy: RetryPolicy) -> T:
    """Run `call` (HTTP through a `retrying_session`) and turn what is left of its failures into
    connector errors: 401/403 → SourceAuthError (retrying will not help), anything else →
    SourceUnavailable."""
    try:
        return call()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise SourceAuthError(
                f"{what}: the server answered HTTP {status} (credentials refused) — check the "
                "username/password or API key in the connector config and its *_env variables"
            ) from exc
        if status not in RETRY_STATUSES:
            raise SourceUnavailable(
                f"{what}: HTTP {status} is not retryable — check the URL and the request"
            ) from exc
        raise SourceUnavailable(_gave_up(what, policy, f"HTTP {status}")) from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise SourceUnavailable(_gave_up(what, policy, str(exc))) from exc


def _gave_up(what: str, policy: RetryPolicy, last: str) -> str:
    return (
        f"{what}: still failing after {policy.attempts} attempts ({last}) — is the source up? "
        "Nothing was skipped: the next run resumes from the saved state"
    )


def http_get(
    url: str,
    *,
    session: requests.Session | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    policy: RetryPolicy | None = None,
) -> bytes:
    """GET a URL with retries; returns the body."""
    policy = policy or RetryPolicy()
    sess = retrying_session(policy, session)

    def call() -> bytes:
        resp = sess.get(url, headers=headers, timeout=timeout)
        resp.raise_for_status()
        return resp.content

    return source_errors(f"GET {url}", call, policy)


def read_source(location: str, **kwargs: Any) -> bytes:
    """Read a local path (or file:// URL) or an http(s) URL."""
    if location.startswith(("http://", "https://")):
        return http_get(location, **kwargs)
    path = Path(location.removeprefix("file://"))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceUnavailable(
            f"cannot read source {path}: {exc.strerror} — check the path in the config"
        ) from exc


# -- report -------------------------------------------------------------------------------


@dataclass
class Report:
    """What one connector run did; printed by the CLI, and JSON for --report files."""

    connector: str
    name: str
    org: str
    read: int = 0
    published_objects: int = 0
    submissions: list[str] = field(default_factory=list)
    unchanged: int = 0
    revoked: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def reject(self, pointer: str, message: str, reason: Reason = Reason.INVALID_PROPERTY) -> None:
        self.rejections.append(Rejection(reason=reason, pointer=pointer, message=message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "name": self.name,
            "org": self.org,
            "read": self.read,
            "published_objects": self.published_objects,
            "submissions": self.submissions,
            "unchanged": self.unchanged,
            "revoked": self.revoked,
            "rejections": [r.model_dump(mode="json") for r in self.rejections],
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


# -- publishing ---------------------------------------------------------------------------

PublishFn = Callable[[dict[str, Any], str, bytes, str | None], Awaitable[Published]]


class Submitter:
    """Packs STIX objects into bundle submissions under a byte and an object-count limit.

    `add(objects, on_commit)` adds one unit of work; units are never split across submissions
    unless a single unit is bigger than the limit.  `on_commit` runs once every object of the
    unit is acknowledged by the broker, which is when the connector may mark it done.
    """

    _HEAD = b'{"type":"bundle","id":"bundle--%s","objects":['

    def __init__(
        self,
        settings: Settings,
        org: Org,
        source: str,
        report: Report,
        *,
        max_bytes: int = BROKER_DEFAULT_MAX_BYTES,
        progress: Callable[[int], None] | None = None,
        publish_fn: PublishFn | None = None,
    ) -> None:
        self.conn = client_kwargs(settings, org.id)  # publish as the org: its ingest ACL
        self.topic = TopicNames(settings.topic_prefix).ingest(org.id)
        self.source = source
        self.report = report
        self.max_bytes = min(max_bytes, settings.limits.message_bytes, settings.max_record_bytes)
        self.max_objects = settings.limits.objects_per_bundle
        self.progress = progress
        self._publish = publish_fn or functools.partial(
            publish, max_record_bytes=settings.max_record_bytes
        )
        self._parts: list[bytes] = []
        self._size = 0
        self._commits: list[Callable[[], None]] = []
        self.checkpoint: Callable[[], None] | None = None  # e.g. save the state file

    def _overhead(self) -> int:
        return len(self._HEAD) + 36 + 2

    async def add(
        self, objects: Iterable[dict[str, Any]], on_commit: Callable[[], None] | None = None
    ) -> None:
        parts = [orjson.dumps(o) for o in objects]
        unit_size = sum(len(p) + 1 for p in parts)
        if self._parts and (
            self._size + unit_size + self._overhead() > self.max_bytes
            or len(self._parts) + len(parts) > self.max_objects
        ):
            await self.flush()
        for part in parts:
            if len(part) + self._overhead() > self.max_bytes:
                raise ConnectorError(
                    f"{self.source}: one STIX object is {len(part)} bytes, over the "
                    f"{self.max_bytes}-byte submission limit — shorten it at the source"
                )
            if self._parts and (
                self._size + len(part) + 1 + self._overhead() > self.max_bytes
                or len(self._parts) >= self.max_objects
            ):
                await self.flush()
            self._parts.append(part)
            self._size += len(part) + 1
        if on_commit is not None:
            self._commits.append(on_commit)
        if not parts and on_commit is not None and not self._parts:
            self._run_commits()

    async def flush(self) -> None:
        if not self._parts:
            self._run_commits()
            return
        body = b",".join(self._parts)
        digest = hashlib.sha256(body).hexdigest()
        bundle_id = uuid5(CONNECTOR_NAMESPACE, f"bundle:{digest}")
        payload = (self._HEAD % bundle_id.encode()) + body + b"]}"
        submission_id = uuid5(CONNECTOR_NAMESPACE, f"{self.source}:{digest}")
        sent = await self._publish(self.conn, self.topic, payload, submission_id)
        self.report.submissions.append(sent.submission_id)
        self.report.published_objects += len(self._parts)
        if self.progress:
            self.progress(len(self._parts))
        self._parts = []
        self._size = 0
        self._run_commits()

    def _run_commits(self) -> None:
        commits, self._commits = self._commits, []
        for commit in commits:
            commit()
        if commits and self.checkpoint is not None:
            self.checkpoint()
