"""Sample STIX objects and a registry for the normalise tests (no Kafka needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from stixbus.core.normalise import NormaliseOutcome, normalise_submission
from stixbus.settings import Limits
from tests.helpers.paths import example_registry

REGISTRY = example_registry()
CERT = REGISTRY.get("cert")  # may relay third-party intelligence
BANK_A = REGISTRY.get("bank-a")  # may not
CENTRAL_BANK = REGISTRY.get("central-bank")  # subscriber only
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TS = "2024-03-01T10:00:00.000Z"
TLP_RED_2 = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
TLP_GREEN_1 = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
TLP_AMBER_STRICT_OPENCTI = "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37"


def new_id(object_type: str) -> str:
    return f"{object_type}--{uuid.uuid4()}"


def indicator(
    pattern: str = "[domain-name:value = 'evil.example']", **extra: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": new_id("indicator"),
        "created": TS,
        "modified": TS,
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2024-03-01T10:00:00Z",
    }
    obj.update(extra)
    return obj


def bundle(*objects: Any, **extra: Any) -> bytes:
    return orjson.dumps(
        {"type": "bundle", "id": new_id("bundle"), "objects": list(objects), **extra}
    )


def run(raw: bytes, publisher: Any = CERT, limits: Limits | None = None) -> NormaliseOutcome:
    return normalise_submission(
        raw,
        publisher,
        REGISTRY,
        limits or Limits(),
        submission_id="sub-1",
        received_at=NOW,
        published_at=NOW,
    )


def numbered_domain_indicator(name: str, n: int, **props: str | bool) -> dict[str, Any]:
    """A domain indicator with a predictable id (`n`) and fixed times: what the sinks tests
    render and compare."""
    return {
        "type": "indicator",
        "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
        "created": "2026-11-01T08:00:00Z",
        "modified": "2026-11-01T08:00:00Z",
        "pattern": f"[domain-name:value = '{name}']",
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00Z",
        **props,
    }
