"""The organisation registry: who is on the bus, what they may do, which STIX identity is theirs.

Loaded from YAML (deploy/orgs.yaml for the local stack).  Topic names, Kafka principals, identity
binding at ingest and agreement parties all derive from it.
"""

from __future__ import annotations

import ipaddress
import uuid
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from schemas.tlp import TLP
from schemas.yaml_file import read_yaml
from stixbus.errors import ConfigError, NotFound

ORG_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$"
# A DNS name as the registry writes it (lower case, no trailing dot; IDNs as A-labels).
DOMAIN_PATTERN = r"^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$"
IDENTITY_ID_PATTERN = (
    r"^identity--[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


class Sector(StrEnum):
    CERT = "cert"
    BANK = "bank"
    ASSOCIATION = "association"
    ISP = "isp"
    REGULATOR = "regulator"
    LAW_ENFORCEMENT = "law-enforcement"
    FIU = "fiu"
    NGO = "ngo"


class Role(StrEnum):
    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"


class OrgQuotas(BaseModel):
    """Per-org override of the Kafka client quotas of its principal (docs/security.md, "Quotas").

    A value left out takes the bus default (STIXBUS_QUOTA_*); names and units are Kafka's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    producer_byte_rate: int | None = Field(
        default=None, ge=1, description="Bytes per second the org may produce, per broker"
    )
    consumer_byte_rate: int | None = Field(
        default=None, ge=1, description="Bytes per second the org may fetch, per broker"
    )
    request_percentage: int | None = Field(
        default=None,
        ge=1,
        description="Share of one broker thread's time (%) its requests may use per quota window",
    )


class Org(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ORG_ID_PATTERN, description="Slug used in topic names and principals")
    name: str = Field(min_length=1, max_length=200)
    sector: Sector
    identity_id: str = Field(pattern=IDENTITY_ID_PATTERN, description="The org's STIX identity")
    default_tlp: TLP = Field(description="TLP applied to objects the org publishes unmarked")
    roles: frozenset[Role] = Field(min_length=1)
    may_relay_third_party: bool = Field(
        default=False,
        description="May publish objects created by identities outside the registry (OSINT relay)",
    )
    # The false-positive guard (docs/feedback.md): indicators naming these are never delivered
    # to anyone (warninglist `member-<id>`, which no agreement can opt out of).
    domains: tuple[Annotated[str, Field(pattern=DOMAIN_PATTERN, max_length=253)], ...] = Field(
        default=(), description="The org's own domains (subdomains included), never blocked"
    )
    networks: tuple[str, ...] = Field(
        default=(), description="The org's own address ranges (CIDR), never blocked"
    )
    quotas: OrgQuotas = Field(
        default_factory=OrgQuotas,
        description="Kafka client quotas of the org's principal (unset values: the bus defaults)",
    )

    @field_validator("networks")
    @classmethod
    def _cidrs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"network {value!r} is not a CIDR block ({exc}): write it as 192.0.2.0/24 "
                    "with host bits zero"
                ) from None
        return values

    @field_validator("default_tlp", mode="before")
    @classmethod
    def _tlp_from_name(cls, value: object) -> object:
        return TLP.parse(value) if isinstance(value, str) else value

    @property
    def publishes(self) -> bool:
        return Role.PUBLISHER in self.roles

    @property
    def subscribes(self) -> bool:
        return Role.SUBSCRIBER in self.roles

    def stix_identity(self) -> dict[str, object]:
        return {
            "type": "identity",
            "spec_version": "2.1",
            "id": self.identity_id,
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "name": self.name,
            "identity_class": "organization",
        }


class BusIdentity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "stixbus"
    identity_id: str = Field(pattern=IDENTITY_ID_PATTERN)
    namespace: uuid.UUID = Field(description="UUIDv5 namespace for ids the bus mints (dedup keys…)")


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bus: BusIdentity
    orgs: tuple[Org, ...] = Field(min_length=1)
    # Not in the YAML: the secret that keys pseudonyms (stixbus/secret_files.py loads it).
    _pseudonym_key: bytes | None = PrivateAttr(default=None)

    def with_pseudonym_key(self, key: bytes) -> Registry:
        """This registry, holding the secret that keys pseudonyms and redacted-copy ids."""
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes (128 bits)")
        keyed = self.model_copy()
        keyed._pseudonym_key = key
        return keyed

    @property
    def pseudonym_key(self) -> bytes:
        if self._pseudonym_key is None:
            raise ValueError(
                "no pseudonym key: pseudonymous and anonymous deliveries need the bus secret "
                "(STIXBUS_PSEUDONYM_KEY, or <STIXBUS_HOME>/secrets/pseudonym.key that the worker "
                "creates at first start); load the registry through BusContext"
            )
        return self._pseudonym_key

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        for attr in ("id", "identity_id"):
            seen: set[str] = set()
            for org in self.orgs:
                value = getattr(org, attr)
                if value in seen:
                    raise ValueError(f"two orgs share {attr} {value!r}: each must be unique")
                seen.add(value)
        if self.bus.identity_id in {o.identity_id for o in self.orgs}:
            raise ValueError("the bus identity_id must differ from every org's identity_id")
        return self

    @cached_property
    def by_id(self) -> dict[str, Org]:
        return {o.id: o for o in self.orgs}

    @cached_property
    def by_identity(self) -> dict[str, Org]:
        return {o.identity_id: o for o in self.orgs}

    def get(self, org_id: str) -> Org:
        try:
            return self.by_id[org_id]
        except KeyError:
            known = ", ".join(sorted(self.by_id))
            raise NotFound(
                f"unknown org {org_id!r}", f"use one the registry knows: {known}"
            ) from None

    @property
    def publishers(self) -> tuple[Org, ...]:
        return tuple(o for o in self.orgs if o.publishes)

    @property
    def subscribers(self) -> tuple[Org, ...]:
        return tuple(o for o in self.orgs if o.subscribes)

    def in_sector(self, sector: Sector) -> tuple[Org, ...]:
        return tuple(o for o in self.orgs if o.sector == sector)


def load_registry(path: str | Path) -> Registry:
    """Read and validate an org registry YAML; errors name the file and the broken field."""
    path = Path(path)
    data = read_yaml(path, "org registry")
    try:
        return Registry.model_validate(data)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            f"org registry {path} is invalid: {exc}", "fix the fields named above"
        ) from exc
