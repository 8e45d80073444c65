"""Records the bus writes between its own stages and to publishers (receipts, dead letters).

Every record is a pydantic model serialised as JSON; Faust topics carry raw bytes and the agents
validate with these models, so the contract lives here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.tlp import TLP

# Kafka header of an ingest record carrying the publisher's submission id (the receipt quotes it).
# The one name: the client sets it, the ingest agent reads it.
SUBMISSION_HEADER = "stixbus-submission-id"


class Reason(StrEnum):
    """Machine-readable rejection reasons, shared by receipts, dead letters and metrics."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    TOO_LARGE = "too_large"
    TOO_MANY_OBJECTS = "too_many_objects"
    STRING_TOO_LONG = "string_too_long"
    TOO_DEEP = "too_deep"
    NOT_STIX = "not_stix"
    UNSUPPORTED_SPEC_VERSION = "unsupported_spec_version"
    UPGRADE_NOT_LOSSLESS = "upgrade_not_lossless"
    MISSING_PROPERTY = "missing_property"
    INVALID_PROPERTY = "invalid_property"
    INVALID_ID = "invalid_id"
    INVALID_TIMESTAMP = "invalid_timestamp"
    MODIFIED_BEFORE_CREATED = "modified_before_created"
    VALID_UNTIL_NOT_AFTER_VALID_FROM = "valid_until_not_after_valid_from"
    INVALID_PATTERN = "invalid_pattern"
    UNKNOWN_MARKING = "unknown_marking"
    IMPERSONATION = "impersonation"
    RELAY_NOT_ALLOWED = "relay_not_allowed"
    VERSION_CONFLICT = "version_conflict"
    NOT_A_PUBLISHER = "not_a_publisher"
    INTERNAL_ERROR = "internal_error"
    NUL_CHARACTER = "nul_character"
    DUPLICATE_OBJECT = "duplicate_object"
    FOREIGN_ID = "foreign_id"
    REDEFINED_TLP = "redefined_tlp"
    NESTED_BUNDLE = "nested_bundle"
    DUPLICATE_KEY = "duplicate_key"
    WRONG_REF_TYPE = "wrong_ref_type"
    PATTERN_TOO_COMPLEX = "pattern_too_complex"
    VALIDATION_TIMEOUT = "validation_timeout"
    NOT_DELIVERED_TO_YOU = "not_delivered_to_you"  # feedback about an id you never received


class Rejection(BaseModel):
    model_config = ConfigDict(frozen=True)

    object_id: str | None = Field(default=None, description="STIX id of the object, if it had one")
    reason: Reason
    pointer: str = Field(default="", description="RFC 6901 JSON pointer into the submission")
    message: str = Field(description="What is wrong and what to do about it")


class Receipt(BaseModel):
    """What a publisher gets back for each submission, on stixbus.receipts.<org>."""

    model_config = ConfigDict(frozen=True)

    submission_id: str
    publisher: str
    received_at: datetime
    accepted: int
    rejected: int
    accepted_ids: list[str] = Field(default_factory=list)
    rejections: list[Rejection] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class DeadLetter(BaseModel):
    """A rejected payload kept verbatim (as text; bytes that are not UTF-8 are base64)."""

    model_config = ConfigDict(frozen=True)

    submission_id: str
    publisher: str
    received_at: datetime
    reasons: list[Rejection]
    payload: str
    payload_encoding: str = Field(default="utf-8", description="utf-8 or base64")
    payload_truncated: bool = Field(
        default=False, description="payload holds only the first bytes (base64) of the input"
    )
    payload_bytes: int | None = Field(default=None, description="Size of the whole input")
    payload_sha256: str | None = Field(default=None, description="SHA-256 of the whole input")
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1


class NormalizedObject(BaseModel):
    """One accepted STIX object plus what the bus learnt about it, on stixbus.normalized."""

    model_config = ConfigDict(frozen=True)

    submission_id: str
    publisher: str = Field(description="Org id bound by the ingest topic, never by the payload")
    received_at: datetime
    published_at: datetime = Field(description="Kafka timestamp of the ingest record")
    object_id: str
    object_type: str
    modified: str | None = Field(default=None, description="Version timestamp; None for SCOs")
    tlp: TLP
    tlp_inherited: bool = Field(default=False, description="Unmarked: took the publisher default")
    dedup_key: str | None = Field(default=None, description="UUIDv5 over the canonical pattern")
    canonical_pattern: str | None = None
    observable_types: list[str] = Field(default_factory=list)
    canonical_sco_id: str | None = Field(
        default=None, description="STIX 2.1 deterministic id of an SCO's canonical value"
    )
    object: dict[str, Any] = Field(description="The STIX 2.1 object as accepted")

    @property
    def key(self) -> str:
        """Partition key: the dedup key when there is one, else the STIX id."""
        return self.dedup_key or self.object_id
