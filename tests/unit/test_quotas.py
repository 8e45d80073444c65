"""Kafka client quotas per org principal (stixbus/kafka/quotas.py): the pure plan.

The broker side (security apply sets and removes them, a publisher over its rate is throttled)
is in tests/broker/test_security_broker.py; the Strimzi side in tests/unit/test_strimzi.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.org import OrgQuotas, load_registry
from stixbus.errors import ConfigError
from stixbus.kafka.acls import ADMIN, SERVICE_PRINCIPALS, WORKER
from stixbus.kafka.quotas import (
    CONSUMER_BYTE_RATE,
    PRODUCER_BYTE_RATE,
    REQUEST_PERCENTAGE,
    Quota,
    defaults,
    derive_quotas,
    plan_quotas,
    settings_quotas,
)
from stixbus.settings import MIB, QuotaDefaults, Settings
from tests.helpers.paths import ORGS_YAML

REGISTRY = load_registry(ORGS_YAML)
BASE = defaults(8 * MIB, 16 * MIB, 100)
LARGEST = 4 * MIB


def _registry_with(tmp_path: Path, **cert_fields: object) -> Path:
    data = yaml.safe_load(ORGS_YAML.read_text())
    data["orgs"][0].update(cert_fields)
    path = tmp_path / "orgs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_org_gets_the_defaults_and_no_bus_principal_any() -> None:
    quotas = derive_quotas(REGISTRY, BASE, LARGEST)
    by_user: dict[str, dict[str, float]] = {}
    for q in quotas:
        by_user.setdefault(q.user, {})[q.key] = q.value
    assert set(by_user) == {o.id for o in REGISTRY.orgs}
    assert not set(by_user) & {*SERVICE_PRINCIPALS, ADMIN}
    assert by_user["bank-a"] == {
        PRODUCER_BYTE_RATE: 8 * MIB,
        CONSUMER_BYTE_RATE: 16 * MIB,
        REQUEST_PERCENTAGE: 100,
    }
    # deploy/orgs.yaml raises the CERT's produce rate (it relays OSINT) and nothing else.
    assert by_user["cert"] == {**by_user["bank-a"], PRODUCER_BYTE_RATE: 32 * MIB}


def test_the_defaults_let_a_publisher_send_its_largest_submission_every_second() -> None:
    shipped = QuotaDefaults(_env_prefix="STIXBUS_TEST_NOTHING_")
    limits = Settings(_env_prefix="STIXBUS_TEST_NOTHING_", _env_file=None).limits
    assert shipped.producer_bytes_per_second >= 2 * limits.message_bytes
    assert shipped.consumer_bytes_per_second >= limits.message_bytes
    assert shipped.request_percentage > 0


def test_zero_in_a_setting_means_no_quota_of_that_kind() -> None:
    quotas = derive_quotas(REGISTRY, defaults(0, 16 * MIB, 0), LARGEST)
    assert {q.key for q in quotas if q.user == "bank-a"} == {CONSUMER_BYTE_RATE}
    # the CERT's own override still applies
    assert Quota("cert", PRODUCER_BYTE_RATE, 32 * MIB) in quotas


def test_settings_are_read_from_stixbus_quota_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STIXBUS_QUOTA_PRODUCER_BYTES_PER_SECOND", str(5 * MIB))
    monkeypatch.setenv("STIXBUS_QUOTA_REQUEST_PERCENTAGE", "0")
    quotas = settings_quotas(REGISTRY, Settings(_env_file=None))
    bank_a = {q.key: q.value for q in quotas if q.user == "bank-a"}
    assert bank_a == {PRODUCER_BYTE_RATE: 5 * MIB, CONSUMER_BYTE_RATE: 16 * MIB}


def test_a_byte_rate_below_the_largest_submission_is_refused_naming_its_source() -> None:
    with pytest.raises(ConfigError, match=r"STIXBUS_QUOTA_PRODUCER_BYTES_PER_SECOND.*'bank-a'"):
        derive_quotas(REGISTRY, defaults(MIB, 16 * MIB, 100), LARGEST)
    low = REGISTRY.model_copy(
        update={
            "orgs": (
                REGISTRY.orgs[0].model_copy(update={"quotas": OrgQuotas(consumer_byte_rate=1024)}),
                *REGISTRY.orgs[1:],
            )
        }
    )
    with pytest.raises(ConfigError, match=r"org 'cert' quotas\.consumer_byte_rate is 1024") as e:
        derive_quotas(low, BASE, LARGEST)
    assert f"at least {LARGEST}" in str(e.value)


@pytest.mark.parametrize(
    ("quotas", "error"),
    [
        ({"producer_byte_rate": 0}, "greater than or equal to 1"),
        ({"request_percentage": -5}, "greater than or equal to 1"),
        ({"producer_bytes": 9 * MIB}, "Extra inputs are not permitted"),
        ({"consumer_byte_rate": "lots"}, "valid integer"),
    ],
)
def test_registry_overrides_are_validated(
    tmp_path: Path, quotas: dict[str, object], error: str
) -> None:
    with pytest.raises(ConfigError, match=r"org registry .* is invalid") as exc:
        load_registry(_registry_with(tmp_path, quotas=quotas))
    assert error in str(exc.value) and "quotas" in str(exc.value)


def test_plan_sets_new_and_changed_values_and_nothing_when_in_step() -> None:
    desired = derive_quotas(REGISTRY, BASE, LARGEST)
    first = plan_quotas(desired, [])
    assert first.set == tuple(desired) and not first.remove
    assert plan_quotas(desired, desired).empty
    stale = [q if q.user != "bank-b" else Quota(q.user, q.key, q.value / 2) for q in desired]
    changed = plan_quotas(desired, stale)
    assert {q.user for q in changed.set} == {"bank-b"} and not changed.remove
    assert all(q in desired for q in changed.set)


def test_plan_removes_quotas_the_registry_does_not_imply_but_keeps_admins() -> None:
    desired = derive_quotas(REGISTRY, BASE, LARGEST)
    on_broker = [
        *desired,
        Quota("bank-z", PRODUCER_BYTE_RATE, 8 * MIB),  # an org no longer in the registry
        Quota("bank-a", "controller_mutation_rate", 5),  # a key the bus does not set
        Quota(WORKER, PRODUCER_BYTE_RATE, MIB),  # would throttle every org's traffic at once
        Quota(ADMIN, REQUEST_PERCENTAGE, 50),  # the super user: not the bus's to manage
    ]
    plan = plan_quotas(desired, on_broker)
    assert not plan.set
    assert plan.remove == (
        Quota("bank-a", "controller_mutation_rate", 5),
        Quota("bank-z", PRODUCER_BYTE_RATE, 8 * MIB),
        Quota(WORKER, PRODUCER_BYTE_RATE, MIB),
    )
