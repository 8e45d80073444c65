"""The submission envelope (pure): the entry point, bundle unwrapping, the per-object loop and
repeated versions across a submission."""

from __future__ import annotations

import gc
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from schemas.envelope import NormalizedObject, Reason, Rejection
from schemas.org import Org, Registry
from schemas.stix import IDENTIFIER_RE
from stixbus.core.deadletter import bounded
from stixbus.core.normalise.checks import check_object
from stixbus.core.normalise.fast_path import accept_plain_indicator
from stixbus.core.normalise.outcome import (
    Accepted,
    NormaliseOutcome,
    Rejected,
    Submission,
    build_outcome,
    normalized_object,
    reject_whole,
)
from stixbus.core.oasis import OasisValidatorDeferred
from stixbus.core.pattern import OfficialGrammarDeferred
from stixbus.core.payload import InputLimits, PayloadProblem, decode_payload


class HeavyChecksDeferred(Exception):
    """`normalise_submission(..., defer_heavy=True)` met a submission that needs the official
    pattern grammar or the OASIS validator: run it again without `defer_heavy` (CPU-heavy, so
    off the event loop and under a time budget: agents/validation_pool.py)."""


def normalise_submission(
    raw: bytes,
    publisher: Org,
    registry: Registry,
    limits: InputLimits,
    *,
    submission_id: str,
    received_at: datetime,
    published_at: datetime,
    remembered_markings: frozenset[str] = frozenset(),
    defer_heavy: bool = False,
) -> NormaliseOutcome:
    """Validate and normalise one ingest record from `publisher`; never raises, but for
    `HeavyChecksDeferred` when `defer_heavy` asks for it.

    `remembered_markings`: ids of marking-definitions this publisher had accepted before
    (stixbus/core/marking_memory.py), which its objects may reference without repeating them.
    `defer_heavy`: raise `HeavyChecksDeferred` instead of running the official pattern grammar
    or the OASIS validator (plain indicators never need them), so the caller can run those
    elsewhere."""
    collecting = gc.isenabled()
    submission = Submission(
        publisher,
        registry,
        submission_id,
        received_at,
        published_at,
        collector_paused=collecting,
        plain_types=(
            type(submission_id) is str
            and type(received_at) is datetime
            and type(published_at) is datetime
            and type(publisher.id) is str
        ),
        defer_heavy=defer_heavy,
    )
    # The cyclic garbage collector is paused for the call (it is CPU-bound, synchronous and
    # bounded by the input limits): its generation-0/1/2 passes over the thousands of young
    # objects a bundle makes cost about a fifth of the time, while everything the call creates
    # is freed by reference counting anyway.  Left as it was found (a caller may have disabled it).
    if collecting:
        gc.disable()
    try:
        outcome = _normalise(raw, submission, limits, remembered_markings)
    except (OfficialGrammarDeferred, OasisValidatorDeferred) as deferred:
        if defer_heavy:
            raise HeavyChecksDeferred(str(deferred)) from None
        raise  # cannot happen: only deferring checks raise them
    except Exception as exc:  # the promise is a receipt for every record, bugs included
        rejection = Rejection(
            reason=Reason.INTERNAL_ERROR,
            message=(
                f"the bus failed while normalising this submission ({type(exc).__name__}: "
                f"{str(exc)[:300]}); nothing was accepted. Resend it later or contact the "
                "bus operator with the submission id"
            ),
        )
        try:
            outcome = build_outcome(raw, submission, [], [rejection], rejected_count=1, warnings=[])
        except Exception:  # e.g. raw was not bytes: still hand back a receipt
            outcome = build_outcome(b"", submission, [], [rejection], rejected_count=1, warnings=[])
    finally:
        if collecting:
            gc.enable()
    if outcome.dead_letter is None or not isinstance(raw, bytes):
        return outcome
    # An input over the ingest limit keeps only its head, size and sha256 in its dead letter:
    # verbatim it may not fit any record, and its receipt must still go out.
    return replace(outcome, dead_letter=bounded(outcome.dead_letter, raw, limits.message_bytes))


def over_budget(
    raw: bytes,
    publisher: Org,
    registry: Registry,
    limits: InputLimits,
    *,
    submission_id: str,
    received_at: datetime,
    published_at: datetime,
    budget_seconds: float,
) -> NormaliseOutcome:
    """The receipt and dead letter of a submission whose checks ran past the time budget."""
    submission = Submission(publisher, registry, submission_id, received_at, published_at)
    outcome = reject_whole(
        raw,
        submission,
        Reason.VALIDATION_TIMEOUT,
        "",
        f"checking this submission (the official STIX pattern grammar or the OASIS validator) "
        f"took longer than the bus's {budget_seconds:g}-second budget, so nothing was accepted: "
        "split it into smaller bundles or simplify its patterns (fewer comparisons, less "
        "nesting), then resend",
    )
    assert outcome.dead_letter is not None
    return replace(outcome, dead_letter=bounded(outcome.dead_letter, raw, limits.message_bytes))


# --- whole submission --------------------------------------------------------------------------
def _normalise(
    raw: bytes, submission: Submission, limits: InputLimits, remembered_markings: frozenset[str]
) -> NormaliseOutcome:
    if not submission.publisher.publishes:
        return reject_whole(
            raw,
            submission,
            Reason.NOT_A_PUBLISHER,
            "",
            f"org {submission.publisher.id!r} has no publisher role in the registry: ask the bus "
            "operator to grant it before publishing",
        )
    document = decode_payload(raw, limits)
    if isinstance(document, PayloadProblem):
        return reject_whole(raw, submission, document.reason, document.pointer, document.message)
    located = _locate_objects(document, limits)
    if isinstance(located, PayloadProblem):
        return reject_whole(raw, submission, located.reason, located.pointer, located.message)
    objects, pointer_prefix, bundle_is_20 = located

    warnings: list[str] = []
    results: list[Accepted | list[Rejection] | None] = [None] * len(objects)
    known_markings: set[str] = set(remembered_markings)
    # Marking definitions first: the other objects may reference them (a stable partition).
    markings = [i for i, obj in enumerate(objects) if _is_marking_definition(obj)]
    order: Iterable[int] = range(len(objects))
    if markings:
        marking_set = set(markings)
        order = markings + [i for i in order if i not in marking_set]
    for index in order:
        pointer = f"{pointer_prefix}/{index}" if pointer_prefix else ""
        obj = objects[index]
        result: Accepted | list[Rejection] | None = None
        if type(obj) is dict and obj.get("type") == "indicator":  # the plain-indicator fast path
            try:
                result = accept_plain_indicator(obj, pointer, submission, known_markings)
            except Rejected as rejected:
                result = rejected.rejections
        if result is None:  # not a plain indicator: the full checks decide
            result = check_object(obj, pointer, bundle_is_20, submission, known_markings)
        if type(result) is Accepted:
            if result.warnings:
                warnings.extend(result.warnings)
            if result.object["type"] == "marking-definition":
                known_markings.add(result.object["id"])
        results[index] = result
    _reject_repeated_versions(objects, results, pointer_prefix)

    accepted: list[NormalizedObject] = []
    rejections: list[Rejection] = []
    rejected_count = 0
    for checked in results:
        if isinstance(checked, Accepted):
            accepted.append(normalized_object(checked, submission))
        elif checked:
            rejected_count += 1
            rejections.extend(checked)
    if not objects:
        warnings.append("the bundle has no objects: nothing to publish")
    return build_outcome(raw, submission, accepted, rejections, rejected_count, warnings)


def _is_marking_definition(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("type") == "marking-definition"


def _locate_objects(
    document: Any, limits: InputLimits
) -> tuple[list[Any], str, bool] | PayloadProblem:
    """(objects, pointer prefix, is a STIX 2.0 bundle) for a bundle or a single object."""
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        return PayloadProblem(
            Reason.NOT_STIX,
            "",
            "the submission is not a STIX object or bundle: send a JSON object with a 'type' "
            "property (a bundle, or one STIX object)",
        )
    if document["type"] != "bundle":
        return [document], "", False
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        return PayloadProblem(
            Reason.NOT_STIX,
            "/objects",
            "the bundle's 'objects' must be a JSON array of STIX objects",
        )
    if len(objects) > limits.objects_per_bundle:
        return PayloadProblem(
            Reason.TOO_MANY_OBJECTS,
            "/objects",
            f"the bundle has {len(objects)} objects, over the {limits.objects_per_bundle}-object "
            "limit: split it into several bundles",
        )
    bundle_id = document.get("id")
    if (
        not isinstance(bundle_id, str)
        or not IDENTIFIER_RE.match(bundle_id)
        or not bundle_id.startswith("bundle--")
    ):
        return PayloadProblem(
            Reason.INVALID_ID,
            "/id",
            f"the bundle id {bundle_id!r} is not of the form bundle--<uuid>: give the bundle a "
            "valid id",
        )
    spec_version = document.get("spec_version")
    if spec_version not in (None, "2.0", "2.1"):
        return PayloadProblem(
            Reason.UNSUPPORTED_SPEC_VERSION,
            "/spec_version",
            f"bundle spec_version {spec_version!r} is not supported: send STIX 2.1 (or 2.0)",
        )
    return objects, "/objects", spec_version == "2.0"


# --- duplicates --------------------------------------------------------------------------------
def _reject_repeated_versions(
    objects: list[Any], results: list[Accepted | list[Rejection] | None], pointer_prefix: str
) -> None:
    """A version is (id, modified): the same one twice in a submission is ambiguous or redundant."""
    first_seen: dict[tuple[str, Any], int] = {}
    for index, result in enumerate(results):
        if not isinstance(result, Accepted):
            continue
        version = (result.object["id"], result.object.get("modified"))
        earlier = first_seen.setdefault(version, index)
        if earlier == index:
            continue
        earlier_result = results[earlier]
        assert isinstance(earlier_result, Accepted)
        same = earlier_result.object == result.object
        where = f"{pointer_prefix}/{earlier}"
        results[index] = [
            Rejection(
                object_id=version[0],
                reason=Reason.DUPLICATE_OBJECT if same else Reason.VERSION_CONFLICT,
                pointer=f"{pointer_prefix}/{index}",
                message=(
                    f"{version[0]} (modified {version[1]}) already appears at {where}"
                    + (
                        ": send each version once"
                        if same
                        else " with different content; a version is (id, modified): bump "
                        "modified for a new version"
                    )
                ),
            )
        ]
