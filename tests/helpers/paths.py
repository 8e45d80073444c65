"""Where the checkout's files are, and the example registry and agreements they hold."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from schemas.agreement import AgreementSet, load_agreements
from schemas.org import Registry, load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
ORGS_YAML = DEPLOY / "orgs.yaml"
AGREEMENTS_YAML = DEPLOY / "agreements.yaml"
TEST_PSEUDONYM_KEY = bytes(range(32))


@lru_cache(maxsize=1)
def example_registry() -> Registry:
    """The registry in deploy/orgs.yaml, loaded once per test session, with a test pseudonym
    key (a worker gets its key from stixbus/secret_files.py)."""
    return load_registry(ORGS_YAML).with_pseudonym_key(TEST_PSEUDONYM_KEY)


@lru_cache(maxsize=1)
def example_agreements() -> AgreementSet:
    return load_agreements(AGREEMENTS_YAML)


FIXTURES = REPO_ROOT / "tests" / "fixtures"
