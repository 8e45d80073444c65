"""`check_agreements`: one test per finding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.agreement import Agreement
from stixbus.core.lint import Finding, FindingCode, Severity, check_agreements
from tests.helpers.agreements import make_agreement
from tests.helpers.paths import example_registry

REGISTRY = example_registry()
NOW = datetime(2026, 6, 1, tzinfo=UTC)
EVERYONE = [
    "sector:cert",
    "sector:bank",
    "sector:association",
    "sector:isp",
    "central-bank",
    "prosecution",
    "fiu",
]


def agreement(**overrides: Any) -> Agreement:
    return make_agreement(**overrides)


# Covers every subscriber so that only the finding under test shows up.
COVER_ALL = agreement(
    id="zz-cover",
    publishers=["isp-one"],
    subscribers=EVERYONE,
    object_types=["note"],
    tlp_ceiling="clear",
)


def findings(*agreements: Agreement) -> list[Finding]:
    return check_agreements([*agreements, COVER_ALL], REGISTRY, NOW)


def only(*agreements: Agreement) -> set[tuple[Severity, str | None, FindingCode]]:
    return {(f.severity, f.agreement_id, f.code) for f in findings(*agreements)}


def test_clean_agreement_has_no_findings() -> None:
    assert findings(agreement()) == []


def test_unknown_org_and_empty_sector() -> None:
    got = only(agreement(subscribers=["bank-z", "sector:ngo"]))
    assert (Severity.ERROR, "ag", FindingCode.UNKNOWN_ORG) in got
    assert (Severity.WARNING, "ag", FindingCode.EMPTY_SECTOR) in got
    message = next(f.message for f in findings(agreement(subscribers=["bank-z"])))
    assert "bank-z" in message and "known:" in message


def test_party_lacking_its_role() -> None:
    assert only(agreement(publishers=["central-bank"], subscribers=["bank-a"])) == {
        (Severity.ERROR, "ag", FindingCode.PARTY_LACKS_ROLE)
    }


def test_red_through_a_sector() -> None:
    got = only(agreement(tlp_ceiling="red", onward_sharing=False))
    assert got == {(Severity.ERROR, "ag", FindingCode.RED_THROUGH_SECTOR)}
    assert only(agreement(tlp_ceiling="red", onward_sharing=False, subscribers=["bank-a"])) == set()


def test_amber_strict_through_sector_and_with_onward_sharing() -> None:
    got = only(agreement(tlp_ceiling="amber+strict"))
    assert got == {
        (Severity.ERROR, "ag", FindingCode.AMBER_STRICT_THROUGH_SECTOR),
        (Severity.ERROR, "ag", FindingCode.AMBER_STRICT_WITH_ONWARD_SHARING),
    }
    named_closed = agreement(
        tlp_ceiling="amber+strict", subscribers=["bank-a"], onward_sharing=False
    )
    assert only(named_closed) == set()


def test_shadowed_agreement() -> None:
    wide = agreement(id="wide")
    narrow = agreement(
        id="narrow",
        subscribers=["bank-a"],
        tlp_ceiling="green",
        object_types=["indicator"],
        attribution="anonymous",
    )
    assert only(wide, narrow) == {(Severity.WARNING, "narrow", FindingCode.SHADOWED)}


def test_overlap_without_containment() -> None:
    indicators = agreement(id="indicators", object_types=["indicator"])
    sightings = agreement(
        id="sightings", object_types=["sighting", "indicator"], tlp_ceiling="green"
    )
    assert only(indicators, sightings) == {(Severity.WARNING, "indicators", FindingCode.OVERLAP)}


def test_disjoint_pairs_do_not_overlap() -> None:
    assert (
        only(agreement(id="xx", subscribers=["bank-a"]), agreement(id="yy", subscribers=["bank-b"]))
        == set()
    )


def test_subscriber_without_agreement() -> None:
    got = check_agreements([agreement()], REGISTRY, NOW)
    orphans = {
        f.message.split()[1] for f in got if f.code is FindingCode.SUBSCRIBER_WITHOUT_AGREEMENT
    }
    assert orphans == {
        "cert",
        "bank-assoc",
        "isp-one",
        "isp-two",
        "central-bank",
        "prosecution",
        "fiu",
    }


def test_term_ended() -> None:
    old = agreement(id="old", term={"valid_from": "2024-01-01", "valid_until": "2026-01-01"})
    assert only(old) == {(Severity.WARNING, "old", FindingCode.TERM_ENDED)}


def test_errors_sort_first() -> None:
    got = findings(
        agreement(id="b-old", term={"valid_from": "2024-01-01", "valid_until": "2025-01-01"}),
        agreement(id="z-bad", subscribers=["nobody"]),
    )
    assert [f.severity for f in got] == sorted(
        (f.severity for f in got), key=lambda s: s is Severity.WARNING
    )
