"""Indicator samples for dedup/route tests (unit and broker)."""

from __future__ import annotations

import uuid
from typing import Any

URL = "[url:value = 'http://login-bank.example/verify']"


def indicator(pattern: str = URL, **props: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-04-01T00:00:00.000Z",
        "modified": "2026-05-01T00:00:00.000Z",
        "name": "Phishing page",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-05-01T00:00:00Z",
        "indicator_types": ["malicious-activity"],
        "labels": ["phishing"],
        "confidence": 80,
    }
    obj.update(props)
    return {k: v for k, v in obj.items() if v is not None}


def version(obj: dict[str, Any], modified: str, **changes: Any) -> dict[str, Any]:
    return {**obj, "modified": modified, **changes}
