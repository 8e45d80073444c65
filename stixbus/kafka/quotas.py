"""Kafka client quotas of the org principals, derived from the registry (pure: no broker, no I/O).

Each org principal `User:<org>` gets, per broker, a `producer_byte_rate`, a `consumer_byte_rate`
and a `request_percentage` (Kafka's user-entity quotas; docs/security.md, "Quotas"): the bus
defaults (STIXBUS_QUOTA_*, 0 for none) unless the org's `quotas` in the registry override them.
A member flooding its ingest topic, or re-reading its deliveries in a loop, is then slowed by the
broker (its responses are delayed) instead of taking the broker's network and threads from the
others.  The bus principals (worker, egress, operator) and `admin` get none: the worker carries
every org's traffic, so a quota on it would throttle everyone at once.

`stixbus security apply` reconciles like the ACLs: the bus owns every user quota on its cluster
(entities naming one user, no client id), so values it does not derive are removed (admin's are
kept); `stixbus security k8s` writes the same values into each KafkaUser's `spec.quotas`.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.org import OrgQuotas, Registry
from stixbus.errors import ConfigError
from stixbus.kafka.acls import ADMIN, check_registry
from stixbus.settings import Settings

PRODUCER_BYTE_RATE = "producer_byte_rate"
CONSUMER_BYTE_RATE = "consumer_byte_rate"
REQUEST_PERCENTAGE = "request_percentage"
QUOTA_KEYS = (PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE)
# Where each default comes from, for error messages.
DEFAULT_SETTING = {
    PRODUCER_BYTE_RATE: "STIXBUS_QUOTA_PRODUCER_BYTES_PER_SECOND",
    CONSUMER_BYTE_RATE: "STIXBUS_QUOTA_CONSUMER_BYTES_PER_SECOND",
    REQUEST_PERCENTAGE: "STIXBUS_QUOTA_REQUEST_PERCENTAGE",
}


@dataclass(frozen=True, order=True)
class Quota:
    """One user-entity quota value: `user` may use `value` of `key` per broker."""

    user: str
    key: str
    value: float

    def describe(self) -> str:
        value = int(self.value) if self.value == int(self.value) else self.value
        return f"User:{self.user} {self.key}={value}"


def defaults(producer: int, consumer: int, request_percentage: int) -> OrgQuotas:
    """The bus defaults as an override-shaped value (0, "no quota", becomes None)."""
    return OrgQuotas(
        producer_byte_rate=producer or None,
        consumer_byte_rate=consumer or None,
        request_percentage=request_percentage or None,
    )


def org_quota_values(override: OrgQuotas, base: OrgQuotas) -> dict[str, int]:
    """The values one org gets: its override where set, else the default; None keys omitted."""
    merged = {k: getattr(override, k) or getattr(base, k) for k in QUOTA_KEYS}
    return {k: v for k, v in merged.items() if v is not None}


def derive_quotas(registry: Registry, base: OrgQuotas, largest_record: int) -> list[Quota]:
    """Every org principal's quotas, sorted.

    A byte rate below `largest_record` (the ingest record limit, STIXBUS_LIMIT_MESSAGE_BYTES)
    is refused: one submission of the largest size would hold its publisher up for more than a
    second, and the bus promises a 4 MiB submission per second at least.
    """
    check_registry(registry)
    out: list[Quota] = []
    for org in registry.orgs:
        values = org_quota_values(org.quotas, base)
        for key in (PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE):
            value = values.get(key)
            if value is not None and value < largest_record:
                source = (
                    f"org {org.id!r} quotas.{key}"
                    if getattr(org.quotas, key) is not None
                    else f"{DEFAULT_SETTING[key]} (the default of org {org.id!r})"
                )
                raise ConfigError(
                    f"{source} is {value} bytes/s, below the largest ingest record "
                    f"({largest_record} bytes, STIXBUS_LIMIT_MESSAGE_BYTES): one such record "
                    "would throttle the org for over a second",
                    f"raise it to at least {largest_record} (or 0 in the setting: no quota)",
                )
        out += [Quota(org.id, k, float(v)) for k, v in values.items()]
    return sorted(out)


def settings_quotas(registry: Registry, settings: Settings) -> list[Quota]:
    """`derive_quotas` with the defaults and the record limit of `settings`."""
    q = settings.quota
    base = defaults(q.producer_bytes_per_second, q.consumer_bytes_per_second, q.request_percentage)
    return derive_quotas(registry, base, settings.limits.message_bytes)


@dataclass(frozen=True)
class QuotaPlan:
    """What `stixbus security apply` changes: values to set (new or changed), keys to remove."""

    set: tuple[Quota, ...]
    remove: tuple[Quota, ...]

    @property
    def empty(self) -> bool:
        return not self.set and not self.remove


def plan_quotas(desired: list[Quota], existing: list[Quota]) -> QuotaPlan:
    """Reconcile: a (user, key) the registry does not imply is removed (never admin's); a desired
    value missing or different on the broker is set."""
    want = {(q.user, q.key): q for q in desired}
    have = {(q.user, q.key): q for q in existing}
    to_set = [q for k, q in want.items() if have.get(k) != q]
    remove = [q for k, q in have.items() if k not in want and q.user != ADMIN]
    return QuotaPlan(set=tuple(sorted(to_set)), remove=tuple(sorted(remove)))
