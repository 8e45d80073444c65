"""The OASIS STIX 2.1 validator as a last word on objects the fast path does not fully model.

Slow (milliseconds an object) but authoritative: the bus promises that everything it delivers
passes it, so whatever the fast path cannot vouch for is checked here.  Warnings ("SHOULD"s) are
ignored, as the validator's default options do; only errors reject.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


class OasisValidatorDeferred(Exception):
    """A check in deferring mode (`Submission.defer_heavy`) needs the validator: the caller runs
    the submission again where slow work is allowed (agents/validation_pool.py)."""


@lru_cache(maxsize=1)
def _options() -> Any:
    from stix2validator import ValidationOptions

    return ValidationOptions(version="2.1")


def oasis_errors(obj: dict[str, Any]) -> list[str]:
    """The validator's error messages for one object (empty when it is valid STIX 2.1)."""
    from stix2validator import validate_instance

    try:
        result = validate_instance(obj, _options())
    except Exception as exc:  # the validator raises on some malformed input instead of reporting
        return [f"the validator could not process it ({type(exc).__name__}: {str(exc)[:200]})"]
    if result.is_valid:
        return []
    return [_without_object_id(str(error), obj.get("id")) for error in result.errors]


def _without_object_id(message: str, object_id: Any) -> str:
    prefix = f"{object_id}: "
    return (
        message[len(prefix) :]
        if isinstance(object_id, str) and message.startswith(prefix)
        else message
    )
