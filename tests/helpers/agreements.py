"""A valid agreement to start from in tests; each test overrides what it is about."""

from __future__ import annotations

from typing import Any

from schemas.agreement import Agreement

BASE: dict[str, Any] = {
    "id": "ag",
    "version": 1,
    "term": {"valid_from": "2026-01-01", "valid_until": "2028-01-01"},
    "purpose": {"code": "incident-response", "text": "x"},
    "publishers": ["cert"],
    "subscribers": ["sector:bank"],
    "tlp_ceiling": "amber",
    "object_types": ["*"],
    "observable_types": ["*"],
    "attribution": "attributed",
    "onward_sharing": True,
}


def make_agreement(**overrides: Any) -> Agreement:
    return Agreement.model_validate({**BASE, **overrides})
