"""What each subscriber's network sinks produce (deploy/sinks.yaml; docs/sinks.md).

One entry per subscriber that wants lists: which formats, the RPZ zone and its policy action,
the TSIG key name of its zone transfers and the resolvers to NOTIFY.  A subscriber without an
entry gets every format with the defaults below.  Secrets (TSIG keys) are never in this file:
they live in `<home>/secrets/tsig/<org>.key` (generated at first start) or the file named here.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.org import ORG_ID_PATTERN
from schemas.yaml_file import read_yaml
from stixbus.errors import ConfigError


class Format(StrEnum):
    RPZ = "rpz"
    EDL = "edl"
    SURICATA = "suricata"
    ZEEK = "zeek"
    MISP = "misp"


class RpzAction(StrEnum):
    """The RPZ policy action per listed name (the record on the right of the trigger)."""

    NXDOMAIN = "nxdomain"  # CNAME .
    NODATA = "nodata"  # CNAME *.
    DROP = "drop"  # CNAME rpz-drop.
    TCP_ONLY = "tcp-only"  # CNAME rpz-tcp-only.
    PASSTHRU = "passthru"  # CNAME rpz-passthru. (log only, with the resolver's rpz-log)
    REDIRECT = "redirect"  # CNAME <rpz_redirect_to> (a walled-garden page)


TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")


class SubscriberSinks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    org: str = Field(pattern=ORG_ID_PATTERN, description="Subscriber org id (deploy/orgs.yaml)")
    formats: tuple[Format, ...] = Field(default=tuple(Format), description="Formats to produce")
    rpz_zone: str | None = Field(
        default=None, description="RPZ zone name; default <org>.rpz.stixbus."
    )
    rpz_action: RpzAction = RpzAction.NXDOMAIN
    rpz_redirect_to: str | None = Field(
        default=None, description="Walled-garden name for rpz_action: redirect"
    )
    rpz_subdomains: bool = Field(
        default=True, description="Also block every name under a listed domain (*.name)"
    )
    tsig_key_name: str | None = Field(default=None, description="default <org>-rpz.")
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret_file: Path | None = Field(
        default=None, description="base64 TSIG secret; default <home>/secrets/tsig/<org>.key"
    )
    axfr_unsigned_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        default=(),
        description=(
            "Addresses that may transfer the zone WITHOUT TSIG (resolvers that cannot sign, "
            "e.g. Unbound 1.17): keep it to the resolver's own address"
        ),
    )
    notify: tuple[str, ...] = Field(
        default=(), description="host:port of resolvers to send DNS NOTIFY on each new serial"
    )

    @field_validator("rpz_zone", "tsig_key_name", "rpz_redirect_to")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        return value if value.endswith(".") else value + "."

    @field_validator("tsig_algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        if value not in TSIG_ALGORITHMS:
            raise ValueError(f"tsig_algorithm {value!r}: use one of {', '.join(TSIG_ALGORITHMS)}")
        return value

    @model_validator(mode="after")
    def _redirect_target(self) -> SubscriberSinks:
        if self.rpz_action is RpzAction.REDIRECT and not self.rpz_redirect_to:
            raise ValueError("rpz_action redirect needs rpz_redirect_to (the walled-garden name)")
        return self

    @property
    def zone(self) -> str:
        return self.rpz_zone or f"{self.org}.rpz.stixbus."

    @property
    def key_name(self) -> str:
        return self.tsig_key_name or f"{self.org}-rpz."


class SinksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscribers: tuple[SubscriberSinks, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> SinksConfig:
        for what, values in (
            ("org", [s.org for s in self.subscribers]),
            ("rpz_zone", [s.zone for s in self.subscribers]),
            ("tsig_key_name", [s.key_name for s in self.subscribers]),
        ):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"{what} {', '.join(duplicates)} appears more than once")
        return self

    def for_org(self, org: str) -> SubscriberSinks:
        for subscriber in self.subscribers:
            if subscriber.org == org:
                return subscriber
        return SubscriberSinks(org=org)


def load_sinks(path: Path) -> SinksConfig:
    """deploy/sinks.yaml (or another file); a missing file means every default."""
    if not path.exists():
        return SinksConfig()
    data = read_yaml(path, "sinks config") or {}
    try:
        return SinksConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(
            f"sinks config {path} is invalid: {exc}", "fix the fields named above"
        ) from exc
