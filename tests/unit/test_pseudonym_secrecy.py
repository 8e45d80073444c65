"""Pseudonyms cannot be recomputed from the repo's files (issue 12, finding 3).

The attacker holds deploy/orgs.yaml (namespace, org ids) and deploy/agreements.yaml, and tries
every way the bus used to derive pseudonyms: UUIDv5 over the namespace, and the HMAC keyed with
the namespace bytes.  None may match what a subscriber receives.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import uuid
from pathlib import Path

import pytest

from schemas.agreement import Attribution
from stixbus.core.redact import PSEUDONYM_PREFIX, pseudonym_identity_id, pseudonymise_value
from stixbus.secret_files import pseudonym_key
from stixbus.settings import Settings
from tests.helpers.paths import ORGS_YAML, example_agreements, example_registry


def recomputations(namespace: uuid.UUID, agreement_id: str, org_id: str) -> set[str]:
    seed = f"pseudonym|{agreement_id}|{org_id}"
    keyed = hmac.new(namespace.bytes, seed.encode(), hashlib.sha256).digest()
    return {
        f"identity--{uuid.uuid5(namespace, seed)}",
        f"identity--{uuid.UUID(bytes=keyed[:16], version=4)}",
    }


def test_pseudonym_identities_are_not_recomputable_from_the_repo() -> None:
    registry = example_registry()
    pseudonymous = [
        a for a in example_agreements().agreements if a.attribution is Attribution.PSEUDONYMOUS
    ]
    assert pseudonymous, "deploy/agreements.yaml should hold a pseudonymous agreement"
    assert ORGS_YAML.is_file()
    for agreement in pseudonymous:
        delivered = {pseudonym_identity_id(agreement.id, o.id, registry) for o in registry.orgs}
        guesses = set().union(
            *(recomputations(registry.bus.namespace, agreement.id, o.id) for o in registry.orgs)
        )
        assert delivered.isdisjoint(guesses)


def test_pseudonymised_values_are_keyed_by_the_secret() -> None:
    registry = example_registry()
    value = pseudonymise_value("IBAN DE00 1234", "description", "agr", registry.pseudonym_key)
    public = hmac.new(
        registry.bus.namespace.bytes, b"agr|description|IBAN DE00 1234", hashlib.sha256
    ).hexdigest()
    assert value.startswith(PSEUDONYM_PREFIX) and value != PSEUDONYM_PREFIX + public[:32]


def test_a_registry_without_the_key_refuses_to_pseudonymise() -> None:
    from schemas.org import load_registry

    with pytest.raises(ValueError, match="no pseudonym key"):
        _ = load_registry(ORGS_YAML).pseudonym_key


def test_key_is_generated_once_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    first = pseudonym_key(settings)
    path = tmp_path / "secrets" / "pseudonym.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert pseudonym_key(settings) == first and len(first) == 32
    other = pseudonym_key(Settings(home=tmp_path / "other"))
    assert other != first


def test_a_configured_key_wins_and_bad_ones_are_refused(tmp_path: Path) -> None:
    hex_key = "ab" * 32
    assert pseudonym_key(Settings(home=tmp_path, pseudonym_key=hex_key)) == bytes.fromhex(hex_key)
    for bad in ("not-hex", "abcd"):
        with pytest.raises(ValueError, match="STIXBUS_PSEUDONYM_KEY"):
            pseudonym_key(Settings(home=tmp_path, pseudonym_key=bad))
