"""Secrets the bus generates for itself on first start (process level: reads and writes files).

The pseudonym key keys every pseudonym the bus hands out (identities, pseudonymised values,
redacted-copy ids under pseudonymous/anonymous agreements).  It must not be derivable from
anything in the repo, so it is either given (`STIXBUS_PSEUDONYM_KEY`, hex) or generated once
into `<STIXBUS_HOME>/secrets/pseudonym.key` (0600, created exclusively, so two workers starting
together agree on one).  Rotation: docs/security.md → "Pseudonym key".
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from stixbus.settings import Settings

KEY_BYTES = 32


def pseudonym_key(settings: Settings) -> bytes:
    """The configured key, else the one in the secrets folder (created on first use)."""
    if settings.pseudonym_key is not None:
        text = settings.pseudonym_key.get_secret_value().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise ValueError(
                "STIXBUS_PSEUDONYM_KEY is not hex: give at least 32 hex digits "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            ) from None
        if len(key) < 16:
            raise ValueError("STIXBUS_PSEUDONYM_KEY is too short: give at least 32 hex digits")
        return key
    return _load_or_create(settings.home / "secrets" / "pseudonym.key")


def connector_id_key(settings: Settings, org_id: str) -> bytes:
    """The key an org's connectors mint deterministic ids with (blocklist id scheme 3):
    derived from the bus secret, so no other member can compute those ids ahead of the org
    and claim them first (docs/dedup.md → "Object ownership")."""
    return hmac.new(pseudonym_key(settings), f"connector-ids|{org_id}".encode(), "sha256").digest()


def taxii_next_key(settings: Settings) -> bytes:
    """The key the TAXII server signs its `next` tokens with (egress/taxii/): generated once
    into `<home>/secrets/taxii-next.key`; replicas share it (copy the file), and replacing it
    turns every outstanding token into a 400 (clients start their paging over)."""
    return _load_or_create(settings.home / "secrets" / "taxii-next.key")


def _load_or_create(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 16:
            raise ValueError(f"{path} holds no usable key: remove it to generate one") from None
        return key
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return bytes.fromhex(path.read_text().strip())
