"""`stixbus agreements check`: findings about an agreement set against the org registry (pure).

The decision function already fails closed on every problem found here; the linter exists so
that an operator sees, before deploying, where an agreement does not do what it seems to say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import combinations

from schemas.agreement import ANY, SECTOR_PREFIX, Agreement, AgreementSet, LabelMatch, MatchMode
from schemas.org import Registry, Role, Sector
from schemas.tlp import TLP
from stixbus.core.decide import permissiveness, resolve_parties
from stixbus.core.guard import CHOSEN_LISTS


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class FindingCode(StrEnum):
    UNKNOWN_ORG = "unknown_org"
    EMPTY_SECTOR = "empty_sector"
    PARTY_LACKS_ROLE = "party_lacks_role"
    RED_THROUGH_SECTOR = "red_through_sector"
    AMBER_STRICT_THROUGH_SECTOR = "amber_strict_through_sector"
    AMBER_STRICT_WITH_ONWARD_SHARING = "amber_strict_with_onward_sharing"
    SHADOWED = "shadowed"
    OVERLAP = "overlap"
    SUBSCRIBER_WITHOUT_AGREEMENT = "subscriber_without_agreement"
    TERM_ENDED = "term_ended"
    UNKNOWN_WARNINGLIST = "unknown_warninglist"


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    agreement_id: str | None
    code: FindingCode
    message: str


def check_agreements(
    agreements: AgreementSet | Sequence[Agreement], registry: Registry, now: datetime
) -> list[Finding]:
    """Every finding, errors first, then by agreement id and code (stable for diffs and tests)."""
    items = tuple(agreements)
    findings: list[Finding] = []
    for agreement in items:
        findings.extend(_party_findings(agreement, registry))
        findings.extend(_tlp_findings(agreement))
        for name in agreement.warninglist_opt_out:
            if name != ANY and name not in CHOSEN_LISTS:
                findings.append(
                    Finding(
                        Severity.WARNING,
                        agreement.id,
                        FindingCode.UNKNOWN_WARNINGLIST,
                        f"warninglist_opt_out names {name!r}, which is not a list the guard "
                        f"loads by default ({', '.join(sorted(CHOSEN_LISTS))}): the opt-out "
                        "does nothing unless STIXBUS_GUARD_LISTS adds it",
                    )
                )
        if agreement.term.valid_until <= now:
            findings.append(
                Finding(
                    Severity.WARNING,
                    agreement.id,
                    FindingCode.TERM_ENDED,
                    f"term ended {agreement.term.valid_until.isoformat()}: nothing is routed "
                    "under it; renew it (new valid_until, version+1) or remove it",
                )
            )
    findings.extend(_overlap_findings(items, registry))
    findings.extend(_orphan_subscriber_findings(items, registry, now))
    order = {Severity.ERROR: 0, Severity.WARNING: 1}
    return sorted(
        findings, key=lambda f: (order[f.severity], f.agreement_id or "", f.code, f.message)
    )


def _party_findings(agreement: Agreement, registry: Registry) -> list[Finding]:
    findings: list[Finding] = []
    for side, parties, role in (
        ("publishers", agreement.publishers, Role.PUBLISHER),
        ("subscribers", agreement.subscribers, Role.SUBSCRIBER),
    ):
        for party in parties:
            if party.startswith(SECTOR_PREFIX):
                sector = Sector(party.removeprefix(SECTOR_PREFIX))
                if not registry.in_sector(sector):
                    findings.append(
                        Finding(
                            Severity.WARNING,
                            agreement.id,
                            FindingCode.EMPTY_SECTOR,
                            f"{side} lists {party} but no org in the registry is in that sector",
                        )
                    )
                continue
            org = registry.by_id.get(party)
            if org is None:
                findings.append(
                    Finding(
                        Severity.ERROR,
                        agreement.id,
                        FindingCode.UNKNOWN_ORG,
                        f"{side} lists {party!r}, which is not in the org registry: fix the id "
                        f"or add the org (known: {', '.join(sorted(registry.by_id))})",
                    )
                )
            elif role not in org.roles:
                findings.append(
                    Finding(
                        Severity.ERROR,
                        agreement.id,
                        FindingCode.PARTY_LACKS_ROLE,
                        f"{side} lists {party}, which lacks the {role.value} role in the "
                        "registry: nothing will flow for it",
                    )
                )
    return findings


def _tlp_findings(agreement: Agreement) -> list[Finding]:
    findings: list[Finding] = []
    sectors = [s for s in agreement.subscribers if s.startswith(SECTOR_PREFIX)]
    if sectors and agreement.tlp_ceiling >= TLP.AMBER_STRICT:
        code, label = (
            (FindingCode.RED_THROUGH_SECTOR, "RED")
            if agreement.tlp_ceiling is TLP.RED
            else (FindingCode.AMBER_STRICT_THROUGH_SECTOR, "AMBER+STRICT")
        )
        findings.append(
            Finding(
                Severity.ERROR,
                agreement.id,
                code,
                f"ceiling TLP:{agreement.tlp_ceiling.label} with sector subscribers "
                f"{', '.join(sectors)}: {label} only reaches subscribers named one by one; name "
                "them or lower the ceiling to AMBER",
            )
        )
    if agreement.tlp_ceiling >= TLP.AMBER_STRICT and agreement.onward_sharing:
        findings.append(
            Finding(
                Severity.ERROR,
                agreement.id,
                FindingCode.AMBER_STRICT_WITH_ONWARD_SHARING,
                f"ceiling TLP:{agreement.tlp_ceiling.label} with onward_sharing: true; "
                "AMBER+STRICT and RED forbid onward sharing (the bus forces it off for them): "
                "set onward_sharing: false or lower the ceiling",
            )
        )
    return findings


def _pairs(agreement: Agreement, registry: Registry) -> set[tuple[str, str]]:
    return {
        (p, s)
        for p in resolve_parties(agreement.publishers, registry)
        for s in resolve_parties(agreement.subscribers, registry)
        if p != s
    }


def _types_contain(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    return outer == ("*",) or (inner != ("*",) and set(inner) <= set(outer))


def _labels_contain(outer: LabelMatch | None, inner: LabelMatch | None) -> bool:
    """Does every object passing `inner` pass `outer`?  (Conservative: False when unsure.)"""
    if outer is None:
        return True
    if inner is None or not set(outer.fields) >= set(inner.fields):
        return False
    outer_values = {v.casefold() for v in outer.values}
    inner_values = {v.casefold() for v in inner.values}
    if outer.mode is MatchMode.ANY:
        if inner.mode is MatchMode.ANY:
            return inner_values <= outer_values
        return not inner_values.isdisjoint(outer_values)
    return inner.mode is MatchMode.ALL and outer_values <= inner_values


def _scope_contains(outer: Agreement, inner: Agreement, subscriber: str) -> bool:
    """Whatever `inner` allows to `subscriber`, `outer` allows too."""
    strict_for_inner = subscriber in inner.named_subscribers
    strict_for_outer = subscriber in outer.named_subscribers
    inner_ceiling = inner.tlp_ceiling if strict_for_inner else min(inner.tlp_ceiling, TLP.AMBER)
    outer_ceiling = outer.tlp_ceiling if strict_for_outer else min(outer.tlp_ceiling, TLP.AMBER)
    outer_min = outer.min_confidence or 0
    return (
        outer_ceiling >= inner_ceiling
        and outer.term.valid_from <= inner.term.valid_from
        and outer.term.valid_until >= inner.term.valid_until
        and _types_contain(outer.object_types, inner.object_types)
        and _types_contain(outer.observable_types, inner.observable_types)
        and _labels_contain(outer.labels, inner.labels)
        and (outer.min_confidence is None or outer_min <= (inner.min_confidence or 0))
        and (outer.min_confidence is None or inner.min_confidence is not None)
    )


def _overlap_findings(items: Sequence[Agreement], registry: Registry) -> list[Finding]:
    findings: list[Finding] = []
    pairs = {a.id: _pairs(a, registry) for a in items}
    for a, b in combinations(items, 2):
        shared = pairs[a.id] & pairs[b.id]
        if not shared:
            continue
        subscribers = {s for _, s in shared}
        a_contains_b = all(_scope_contains(a, b, s) for s in subscribers)
        b_contains_a = all(_scope_contains(b, a, s) for s in subscribers)
        sample = ", ".join(f"{p}->{s}" for p, s in sorted(shared)[:3])
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        for outer, inner, contains in ((a, b, a_contains_b), (b, a, b_contains_a)):
            if contains and permissiveness(outer) > permissiveness(inner):
                findings.append(
                    Finding(
                        Severity.WARNING,
                        inner.id,
                        FindingCode.SHADOWED,
                        f"never used for {sample}{more}: {outer.id} allows everything it "
                        "allows and wins as more permissive; narrow or remove one",
                    )
                )
                break
        else:
            findings.append(
                Finding(
                    Severity.WARNING,
                    min(a.id, b.id),
                    FindingCode.OVERLAP,
                    f"{a.id} and {b.id} both cover {sample}{more}: where both allow, the more "
                    f"permissive one ({max(a, b, key=permissiveness).id}) decides attribution "
                    "and redaction",
                )
            )
    return findings


def _orphan_subscriber_findings(
    items: Sequence[Agreement], registry: Registry, now: datetime
) -> list[Finding]:
    covered: set[str] = set()
    for agreement in items:
        if agreement.term.valid_until > now:
            covered |= resolve_parties(agreement.subscribers, registry)
    return [
        Finding(
            Severity.WARNING,
            None,
            FindingCode.SUBSCRIBER_WITHOUT_AGREEMENT,
            f"subscriber {org.id} is party to no current or future agreement: it receives "
            "nothing; add it to an agreement or drop its subscriber role",
        )
        for org in registry.subscribers
        if org.id not in covered
    ]
