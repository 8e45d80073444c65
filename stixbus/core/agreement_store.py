"""The agreements in force on one worker, replayed from the compacted agreements topic.

Key = agreement id, value = the agreement as JSON, an empty value (tombstone) retires it.
`apply_batch` folds records in and rebuilds the compiled index once per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydantic import ValidationError

from schemas.agreement import Agreement
from schemas.org import Registry
from stixbus.core.decide import AgreementIndex

log = logging.getLogger(__name__)


class AgreementStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.agreements: dict[str, Agreement] = {}
        self.index = AgreementIndex((), registry)

    def apply_batch(
        self, records: Iterable[tuple[bytes | None, bytes | None]]
    ) -> dict[str, int | None]:
        """Fold topic records in; returns what changed: agreement id -> version (None: retired).
        A bad record is logged and skipped."""
        changes: dict[str, int | None] = {}
        for key, value in records:
            agreement_id = (key or b"").decode("utf-8", "replace")
            if not value:
                if self.agreements.pop(agreement_id, None) is not None:
                    changes[agreement_id] = None
                    log.warning("agreement %s retired", agreement_id)
                continue
            agreement = _parse(agreement_id, value)
            if agreement is None:
                continue
            previous = self.agreements.get(agreement.id)
            if previous is not None and agreement.version < previous.version:
                log.warning(
                    "agreement %s goes back from version %d to %d (rollback?)",
                    agreement.id,
                    previous.version,
                    agreement.version,
                )
            self.agreements[agreement.id] = agreement
            changes[agreement.id] = agreement.version
            log.warning("agreement %s version %d in force", agreement.id, agreement.version)
        if changes:
            self.index = AgreementIndex(tuple(self.agreements.values()), self.registry)
        return changes


def _parse(agreement_id: str, value: bytes) -> Agreement | None:
    try:
        agreement = Agreement.model_validate_json(value)
    except ValidationError as exc:
        log.error("agreements topic: record %r is not a valid agreement: %s", agreement_id, exc)
        return None
    if agreement.id != agreement_id:
        # Compaction and tombstones work per key: a record keyed otherwise could never be
        # retired by `stixbus agreements retire <id>`.
        log.error(
            "agreements topic: record keyed %r holds agreement %r; skipped (the key must be the "
            "agreement id)",
            agreement_id,
            agreement.id,
        )
        return None
    return agreement
