"""Normalise one ingest submission (pure): parse, validate, upgrade, bind identity, canonicalise.

`normalise_submission` is the only entry point; the Faust agent calls it once per ingest record
and publishes what it returns.  It never raises: anything unexpected becomes an
`internal_error` rejection, so a record is never lost between ingest and the receipt.

Validation is a fast path that is at least as strict as the OASIS `stix2-validator`: pydantic
models and a pattern fast parser for what indicators normally look like, and the OASIS validator
itself for everything the fast path does not model completely (other object types, extensions,
external references, unusual custom properties...).  See docs/normalise.md.

Modules:
- `envelope`: the entry point, bundle unwrapping, the per-object loop, repeated versions;
- `fast_path`: the plain-indicator fast path (one pass, no pydantic);
- `checks`: the full per-object checks (models, timestamps, markings, identity, OASIS);
- `outcome`: per-object results, output records, the receipt and the dead letter.
"""

from stixbus.core.normalise.checks import FAST_PATH_TYPES, OFFICIALLY_CHECKED_PROPERTIES
from stixbus.core.normalise.envelope import (
    HeavyChecksDeferred,
    normalise_submission,
    over_budget,
)
from stixbus.core.normalise.outcome import NormaliseOutcome, Submission

__all__ = [
    "FAST_PATH_TYPES",
    "OFFICIALLY_CHECKED_PROPERTIES",
    "HeavyChecksDeferred",
    "NormaliseOutcome",
    "Submission",
    "normalise_submission",
    "over_budget",
]
