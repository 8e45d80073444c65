"""Issue #12 finding 9, the parts of the TAXII inbox that need no broker: which Kafka passwords
it holds, the per-token-id limiter and the bounded status store."""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.base import ConnectorError
from connectors.inbox import Inbox, InboxConfig
from connectors.inbox_auth import AttemptLimiter, RateLimited
from connectors.inbox_status import StatusEntry, StatusStore
from schemas.envelope import Receipt
from stixbus.settings import Settings
from tests.helpers.paths import ORGS_YAML

PASSWORDS = {
    "admin": "admin-" + "a" * 40,
    "stixbus-worker": "worker-" + "w" * 40,
    "stixbus-operator": "operator-" + "o" * 40,
    "cert": "cert-" + "c" * 40,
    "bank-a": "bank-a-" + "b" * 40,
    "bank-b": "bank-b-" + "x" * 40,
}


def _reachable_strings(root: object, limit: int = 200_000) -> set[str]:
    """Every str reachable from `root` through object references (what a heap dump shows)."""
    seen: set[int] = set()
    found: set[str] = set()
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.add(obj)
            continue
        if isinstance(obj, SecretStr):
            found.add(obj.get_secret_value())
        if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "__dict__")):
            continue
        stack.extend(gc.get_referents(obj))
    return found


def _secured(tmp_path: Path) -> Settings:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"users": PASSWORDS}))
    return Settings(
        registry_path=ORGS_YAML,
        security_protocol="SASL_SSL",
        credentials_file=creds,
        home=tmp_path,
    )


def test_inbox_holds_only_the_passwords_of_the_orgs_it_serves(tmp_path: Path) -> None:
    settings = _secured(tmp_path)
    config = InboxConfig(name="inbox", tokens_file=tmp_path / "t.yaml", orgs=["cert", "bank-a"])
    inbox = Inbox(config, settings)
    assert set(inbox.credentials) == {"cert", "bank-a"}
    held = _reachable_strings(inbox)
    assert PASSWORDS["cert"] in held  # the scan does see what the inbox holds
    for principal in ("admin", "stixbus-worker", "stixbus-operator", "bank-b"):
        assert PASSWORDS[principal] not in held, f"the inbox holds {principal}'s password"
    # It never goes back to the file that has everyone's passwords.
    assert settings.credentials_file is not None
    settings.credentials_file.write_text('{"users": {}}')
    kwargs: dict[str, Any] = inbox.kafka("cert")
    assert kwargs["sasl_plain_username"] == "cert"
    assert kwargs["sasl_plain_password"] == PASSWORDS["cert"]


def test_inbox_refuses_to_serve_an_org_it_has_no_password_for(tmp_path: Path) -> None:
    settings = _secured(tmp_path)
    assert settings.credentials_file is not None
    settings.credentials_file.write_text(json.dumps({"users": {"cert": "x"}}))
    config = InboxConfig(name="inbox", tokens_file=tmp_path / "t.yaml", orgs=["cert", "bank-a"])
    with pytest.raises(ConnectorError, match="bank-a"):
        Inbox(config, settings)


def test_limiter_counts_per_key_and_forgets_after_the_window() -> None:
    now = [0.0]
    limiter = AttemptLimiter(3, window=60, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("aaaa")
    with pytest.raises(RateLimited) as raised:
        limiter.check("aaaa")
    assert 0 < raised.value.retry_after <= 60
    limiter.check("bbbb")  # another id is not locked out
    now[0] = 61
    limiter.check("aaaa")


def _entry(org: str, n: int) -> StatusEntry:
    versions = {f"indicator--{i:036d}": "2026-11-01T08:00:00.000Z" for i in range(n)}
    return StatusEntry(org, "2026-11-01T08:00:00.000Z", versions)


def test_status_store_is_bounded_in_bytes() -> None:
    store = StatusStore(max_bytes=10_000, max_age=3600)
    for i in range(200):
        store.add(f"s{i}", _entry("cert", 10))
        assert store.bytes <= 10_000
    assert store.get("s0") is None and store.get("s199") is not None
    receipt = Receipt(
        submission_id="s199",
        publisher="cert",
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
        accepted=10,
        rejected=0,
    )
    store.attach(receipt, 9_000)
    assert store.bytes <= 10_000


def test_status_store_forgets_old_statuses() -> None:
    now = [0.0]
    store = StatusStore(max_bytes=1_000_000, max_age=60, clock=lambda: now[0])
    store.add("old", _entry("cert", 1))
    now[0] = 30
    store.add("new", _entry("cert", 1))
    now[0] = 61
    assert store.get("old") is None and store.get("new") is not None
    assert len(store) == 1
