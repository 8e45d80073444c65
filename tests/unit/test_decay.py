"""Indicator decay (stixbus/core/decay.py): default valid_until by observable type and
per-agreement max_age, through the route stage's pure step and the table encoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.agreement import load_agreements
from schemas.envelope import NormalizedObject
from stixbus.core.decay import DecayPolicy, capped_until, expires_at
from stixbus.core.decide import AgreementIndex
from stixbus.core.deliveries import RouteConfig
from stixbus.core.ids import parse_time, stix_time
from stixbus.core.normalise import normalise_submission
from stixbus.core.route_step import StepResult, TableWrite, Tick, route_step
from stixbus.core.state_codec import decode_state, encode_state
from stixbus.settings import Limits, Settings
from tests.helpers.dedup_samples import indicator, version
from tests.helpers.paths import REPO_ROOT, example_registry

REGISTRY = example_registry()
AGREEMENTS = load_agreements(REPO_ROOT / "deploy" / "agreements.yaml")
INDEX = AgreementIndex(AGREEMENTS, REGISTRY)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MINUTE = DecayPolicy.from_seconds({"ipv4-addr": 60, "domain-name": 120})
IP = "[ipv4-addr:value = '11.203.113.23']"


def record(obj: dict[str, Any], at: datetime = T0) -> NormalizedObject:
    outcome = normalise_submission(
        orjson.dumps(obj), REGISTRY.get("cert"), REGISTRY, Limits(),
        submission_id=str(uuid.uuid4()), received_at=at, published_at=at,
    )  # fmt: skip
    assert outcome.rejections == [], outcome.rejections
    (accepted,) = outcome.accepted
    return accepted


class Table:
    def __init__(self, index: AgreementIndex = INDEX, decay: DecayPolicy = MINUTE) -> None:
        self.raw: bytes | None = None
        self.index = index
        self.config = RouteConfig(decay=decay)

    def step(self, event: NormalizedObject | Tick, at: datetime = T0) -> StepResult:
        state = decode_state(self.raw) if self.raw else None
        result = route_step(event, state, REGISTRY, self.index, at, self.config, 3600.0)
        if result.table is TableWrite.PUT:
            assert result.state is not None
            self.raw = encode_state(result.state)
        return result


def test_policy_defaults_and_lifetimes() -> None:
    settings = Settings()
    policy = DecayPolicy.from_seconds(settings.decay_lifetimes)
    assert policy.lifetime(["ipv4-addr"]) == timedelta(days=30)
    assert policy.lifetime(["domain-name"]) == timedelta(days=90)
    assert policy.lifetime(["file"]) is None  # hashes never decay by default
    assert policy.lifetime(["domain-name", "ipv4-addr"]) == timedelta(days=30)  # the shortest
    # counted from the later of valid_from and when the bus accepted it
    assert MINUTE.default_until(["ipv4-addr"], "2020-01-01T00:00:00Z", T0) == stix_time(
        T0 + timedelta(minutes=1)
    )
    later = T0 + timedelta(hours=1)
    assert MINUTE.default_until(["ipv4-addr"], stix_time(later), T0) == stix_time(
        later + timedelta(minutes=1)
    )


def test_capped_until_and_expires_at() -> None:
    day = timedelta(days=1)
    assert capped_until(None, T0, None) is None
    assert capped_until(None, T0, day) == stix_time(T0 + day)
    far = stix_time(T0 + 10 * day)
    assert capped_until(far, T0, day) == stix_time(T0 + day)
    near = stix_time(T0 + timedelta(hours=1))
    assert capped_until(near, T0, day) == near
    at, why = expires_at(None, ["ipv4-addr"], None, T0, MINUTE, None)
    assert at == T0 + timedelta(minutes=1) and "default lifetime" in why
    at, why = expires_at(None, ["ipv4-addr"], None, T0, MINUTE, timedelta(seconds=10))
    assert at == T0 + timedelta(seconds=10) and "max_age" in why
    at, why = expires_at(None, ["file"], None, T0, MINUTE, None)
    assert at is None and why.startswith("never")


def test_an_indicator_without_valid_until_is_revoked_at_every_recipient() -> None:
    table = Table()
    first = table.step(record(indicator(IP)))
    recipients = {d.subscriber for d in first.deliveries}
    assert recipients >= {"bank-a", "isp-one", "prosecution"}
    until = T0 + timedelta(minutes=1)
    for delivery in first.deliveries:
        assert delivery.stix_object["valid_until"] == stix_time(until)
    assert first.deadline == until
    assert table.step(Tick(), T0 + timedelta(seconds=30)).deliveries == []
    expired = table.step(Tick(), until + timedelta(seconds=1))
    assert {d.subscriber for d in expired.deliveries} == recipients
    for delivery in expired.deliveries:
        assert delivery.revocation and delivery.stix_object["revoked"] is True
        assert delivery.decay == "valid_until"
    # without the policy the same indicator never expires: the test can fail
    assert Table(decay=DecayPolicy()).step(record(indicator(IP))).deadline == T0 + timedelta(
        days=30
    )  # only the ISPs' max_age (deploy/agreements.yaml) ticks it


def test_a_producers_valid_until_and_hashes_are_left_alone() -> None:
    until = stix_time(T0 + timedelta(days=3))
    result = Table().step(record(indicator(IP, valid_until=until)))
    bank = next(d for d in result.deliveries if d.subscriber == "bank-a")
    assert bank.stix_object["valid_until"] == until
    sha = "[file:hashes.'SHA-256' = '" + "ab" * 32 + "']"
    hashed = Table().step(record(indicator(sha)))
    bank = next(d for d in hashed.deliveries if d.subscriber == "bank-a")
    assert "valid_until" not in bank.stix_object


def test_an_immaterial_new_version_keeps_the_clock_and_delivers_nothing() -> None:
    table, obj = Table(), indicator(IP)
    table.step(record(obj))
    later = T0 + timedelta(seconds=20)
    again = table.step(record(version(obj, "2026-05-02T00:00:00.000Z", description="x"), later))
    assert again.deliveries == []
    assert again.deadline == T0 + timedelta(minutes=1)


def test_max_age_revokes_only_that_agreements_subscribers() -> None:
    aged = [
        a.model_copy(update={"max_age": timedelta(minutes=1)})
        if a.id == "cert-to-banks-fraud"
        else a
        for a in AGREEMENTS
    ]
    table = Table(AgreementIndex(aged, REGISTRY), DecayPolicy())
    sha = "[file:hashes.'SHA-256' = '" + "cd" * 32 + "']"  # never decays by default
    first = table.step(record(indicator(sha)))
    bodies = {d.subscriber: d.stix_object for d in first.deliveries}
    assert parse_time(bodies["bank-a"]["valid_until"]) == T0 + timedelta(minutes=1)
    assert "valid_until" not in bodies["prosecution"]
    assert first.deadline == T0 + timedelta(minutes=1)
    expired = table.step(Tick(), T0 + timedelta(seconds=61))
    banks = {"bank-a", "bank-b", "bank-c"}
    assert {d.subscriber for d in expired.deliveries} == banks
    assert all(d.revocation and d.decay == "max_age" for d in expired.deliveries)
    # revoked is final: a later tick sends nothing more
    assert table.step(Tick(), T0 + timedelta(minutes=5)).deliveries == []
