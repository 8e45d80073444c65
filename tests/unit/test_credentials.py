"""Pull-server credentials (egress/credentials.py): hashed at rest, rotatable, revocable,
constant work for unknown names, and nothing but the right secret authenticates."""

from __future__ import annotations

import asyncio
import base64
import stat
from pathlib import Path

import pytest

from egress.credentials import (
    CredentialStore,
    add_credential,
    list_credentials,
    parse_authorization,
    revoke_credential,
    rotate_credential,
)
from stixbus.core.ratelimit import AttemptLimiter, RateLimited
from stixbus.errors import ConfigError, NotFound


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_secrets_are_hashed_at_rest_and_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "creds.yaml"
    _, password = add_credential(path, "bank-a")
    _, token = add_credential(path, "bank-a", "token")
    text = path.read_text()
    assert password not in text and token.split("_", 2)[2] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token.startswith("sbt_")


def test_basic_and_bearer_authenticate_their_org_only(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    _, pa = add_credential(path, "bank-a")
    _, pb = add_credential(path, "bank-b")
    _, tb = add_credential(path, "bank-b", "token", label="splunk")
    store = CredentialStore(path)
    assert store.authenticate_blocking(basic("bank-a", pa)) == "bank-a"
    assert store.authenticate_blocking(basic("bank-b", pb)) == "bank-b"
    assert store.authenticate_blocking(f"Bearer {tb}") == "bank-b"
    assert store.authenticate_blocking(basic("anything", tb)) == "bank-b"  # token as password
    # the attacker's side: another org's password, wrong ones, no or malformed headers
    assert store.authenticate_blocking(basic("bank-a", pb)) is None
    assert store.authenticate_blocking(basic("bank-a", pa + "x")) is None
    assert store.authenticate_blocking(basic("nobody", pa)) is None
    assert store.authenticate_blocking(f"Bearer {tb[:-1]}") is None
    assert store.authenticate_blocking(f"Bearer sbt_000000000000_{tb.split('_', 2)[2]}") is None
    assert store.authenticate_blocking(None) is None
    assert store.authenticate_blocking("Basic !!!") is None
    assert store.authenticate_blocking("Digest abc") is None
    assert store.authenticate_blocking(basic("bank-a", "")) is None


def test_rotate_and_revoke_take_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    record, old = add_credential(path, "bank-a")
    store = CredentialStore(path)

    async def go() -> None:
        assert await store.authenticate(basic("bank-a", old)) == "bank-a"  # now cached
        _, new = rotate_credential(path, record.id)
        assert await store.authenticate(basic("bank-a", old)) is None
        assert await store.authenticate(basic("bank-a", new)) == "bank-a"
        revoke_credential(path, record.id)
        assert await store.authenticate(basic("bank-a", new)) is None

    asyncio.run(go())
    store.close()
    assert list_credentials(path) == []
    with pytest.raises(NotFound):
        revoke_credential(path, record.id)


def test_usernames_are_unique_and_orgs_filter(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    _, pa = add_credential(path, "bank-a")
    with pytest.raises(ConfigError):
        add_credential(path, "bank-b", username="bank-a")
    store = CredentialStore(path, orgs={"bank-b"})
    assert store.authenticate_blocking(basic("bank-a", pa)) is None


def test_attempts_are_limited_per_username(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    add_credential(path, "bank-a")
    store = CredentialStore(path, AttemptLimiter(2, window=60, clock=lambda: 0.0))

    async def go() -> None:
        for _ in range(2):
            assert await store.authenticate(basic("bank-a", "guess")) is None
        with pytest.raises(RateLimited):
            await store.authenticate(basic("bank-a", "guess"))

    asyncio.run(go())
    store.close()


def test_parse_authorization_shapes() -> None:
    assert parse_authorization(basic("u", "p")) == ("basic", "u", "p")
    assert parse_authorization("Bearer sbt_0123456789ab_xyz") == (
        "token",
        "0123456789ab",
        "sbt_0123456789ab_xyz",
    )
    assert parse_authorization("Bearer junk") == ("token", "", "junk")
    assert parse_authorization("") is None
