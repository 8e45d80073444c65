"""The per-agreement false-positive policy at routing (pure; docs/feedback.md).

The feedback stage counts, per dedup key, the distinct member orgs that currently report the
key's indicator as a false positive (stixbus/core/feedback.py) and publishes the count on the
compacted false-positives topic; every worker replays it into `RouteConfig.false_positives`.
Once a bus-minted indicator's count reaches an agreement's `false_positive.threshold`, that
agreement's subscribers get it with its confidence capped (`lower_confidence`) or not at all
(`withhold`: whoever holds it gets a revocation, which is final), and the audit says why.
"""

from __future__ import annotations

from typing import Any

from schemas.agreement import FalsePositiveAction, FalsePositivePolicy
from stixbus.core.decide import AgreementIndex
from stixbus.core.decision import Decision, Reason, ReasonCode, Transformation, TransformKind
from stixbus.core.routing import agreements_by_id


def triggered_policy(
    index: AgreementIndex, agreement_id: str | None, reporters: int
) -> FalsePositivePolicy | None:
    """The agreement's policy if `reporters` distinct false-positive reports reach it."""
    if reporters <= 0 or agreement_id is None:
        return None
    agreement = agreements_by_id(index).get(agreement_id)
    policy = agreement.false_positive if agreement is not None else None
    if policy is None or reporters < policy.threshold:
        return None
    return policy


def policy_decision(
    decision: Decision, agreement_id: str | None, policy: FalsePositivePolicy, reporters: int
) -> Decision:
    """`decision` as the policy changes it: a deny (withhold) or an allow that caps confidence."""
    why = (
        f"{reporters} member orgs reported this indicator as a false positive; agreement "
        f"{agreement_id}'s false_positive policy (threshold {policy.threshold}) "
    )
    if policy.action is FalsePositiveAction.WITHHOLD:
        reason = Reason(ReasonCode.FALSE_POSITIVE, why + "withholds it", agreement_id)
        return decision._replace(allow=False, reasons=(reason,))
    step = Transformation(
        TransformKind.LOWER_CONFIDENCE, why + f"caps its confidence at {policy.confidence}"
    )
    return decision._replace(transformations=(*decision.transformations, step))


def capped_body(body: dict[str, Any], cap: int) -> dict[str, Any]:
    """A minted body with its confidence at most `cap` (set to `cap` when it had none)."""
    confidence = body.get("confidence")
    value = min(confidence, cap) if isinstance(confidence, int) else cap
    return body if confidence == value else {**body, "confidence": value}
