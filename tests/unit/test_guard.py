"""The false-positive guard (stixbus/core/guard.py): the index, the deny reason, the opt-out,
the receipt warning, and the property that no listed value reaches a subscriber whose
agreement does not opt out."""

from __future__ import annotations

import ipaddress
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.agreement import Agreement, load_agreements
from schemas.envelope import NormalizedObject, Receipt
from stixbus.core.decide import AgreementIndex
from stixbus.core.decision import ReasonCode
from stixbus.core.deliveries import RouteConfig
from stixbus.core.guard import (
    CHOSEN_LISTS,
    NO_HITS,
    _build_ranges,
    build_index,
    guarded_receipt,
)
from stixbus.core.normalise import normalise_submission
from stixbus.core.route_step import route_step
from stixbus.settings import Limits
from stixbus.warninglists import guard_index, load_lists
from tests.helpers.dedup_samples import indicator
from tests.helpers.paths import REPO_ROOT, example_registry

REGISTRY = example_registry()
AGREEMENTS = load_agreements(REPO_ROOT / "deploy" / "agreements.yaml")
INDEX = AgreementIndex(AGREEMENTS, REGISTRY)
GUARD = guard_index(REGISTRY)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def record(pattern: str, org: str = "cert", **props: Any) -> NormalizedObject:
    obj = indicator(pattern, **props)
    outcome = normalise_submission(
        orjson.dumps(obj), REGISTRY.get(org), REGISTRY, Limits(),
        submission_id=str(uuid.uuid4()), received_at=T0, published_at=T0,
    )  # fmt: skip
    assert outcome.rejections == [], outcome.rejections
    (accepted,) = outcome.accepted
    return accepted


# --- the index --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observable_type", "value", "expected"),
    [
        ("ipv4-addr", "8.8.8.8", "public-dns-v4"),
        ("ipv4-addr", "1.1.1.1", "public-dns-v4"),
        ("ipv4-addr", "198.51.100.23", "rfc5735"),
        ("ipv4-addr", "198.51.100.0/24", "rfc5735"),  # a documentation block
        ("ipv4-addr", "8.8.8.0/24", "public-dns-v4"),  # overlaps a resolver
        ("ipv4-addr", "10.1.2.3", "rfc1918"),
        ("ipv6-addr", "2001:db8::1", "rfc3849"),
        ("domain-name", "google.com", "tranco10k"),
        ("domain-name", "mail.google.com", "tranco10k"),  # hostname lists cover subdomains
        ("domain-name", "www.example.com", "rfc6761"),  # RFC 6761 reserves the subtree
        ("url", "https://docs.google.com/forms/x", "tranco10k"),  # a URL's host
        ("url", "http://198.51.100.14:8080/bins", "rfc5735"),
        ("domain-name", "alphabank.example", "member-bank-a"),  # the registry
        ("domain-name", "login.alphabank.example", "member-bank-a"),
        ("ipv4-addr", "11.101.7.7", "member-bank-a"),
        ("file", "d41d8cd98f00b204e9800998ecf8427e", "empty-hashes"),  # MD5 of nothing
    ],
)
def test_listed_values_hit_their_list(observable_type: str, value: str, expected: str) -> None:
    assert expected in GUARD.observable(observable_type, value)


@pytest.mark.parametrize(
    ("observable_type", "value"),
    [
        # the demo and test values (docs/feedback.md explains the choice)
        ("domain-name", "login-alphabank.example"),
        ("domain-name", "evil-pay.example"),
        ("url", "http://login-bank.example/verify"),
        ("ipv4-addr", "11.203.113.23"),
        ("ipv4-addr", "11.203.113.0/24"),
        # exact-match (`string`) lists do not cover parents or children
        ("domain-name", "com"),
        ("domain-name", "google-login-check.example"),
        ("email-addr", "abuse@google.com"),  # emails are not guarded
    ],
)
def test_other_values_do_not_hit(observable_type: str, value: str) -> None:
    assert GUARD.observable(observable_type, value) == NO_HITS


def test_every_chosen_list_is_loaded_and_members_are_added() -> None:
    assert set(CHOSEN_LISTS) <= GUARD.names
    assert {"member-bank-a", "member-bank-b"} <= GUARD.names
    assert "member-cert" not in GUARD.names  # no domains of its own in the registry


def test_list_semantics_follow_the_misp_type() -> None:
    docs = [
        {"slug": "exact", "type": "string", "list": ["foo.test"]},
        {"slug": "tree", "type": "hostname", "list": ["bar.test"]},
        {"slug": "dotted", "type": "string", "list": [".baz.test"]},
        {"slug": "nets", "type": "cidr", "list": ["11.0.0.0/8", "11.1.0.0/16", "2001:db8::/32"]},
    ]
    index = build_index(docs, None)
    assert index.domain("foo.test") == ("exact",)
    assert index.domain("a.foo.test") == NO_HITS
    assert index.domain("a.b.bar.test") == ("tree",)
    assert index.domain("x.baz.test") == ("dotted",)
    assert index.address("11.1.2.3") == ("nets",)
    assert index.address("12.0.0.0") == NO_HITS
    assert index.address("0.0.0.0/0") == ("nets",)
    assert index.address("2001:db8:1::5") == ("nets",)
    with pytest.raises(ValueError, match="cannot match"):
        build_index([{"slug": "re", "type": "regex", "list": ["^x$"]}], None)


@settings(max_examples=200, deadline=None)
@given(
    ranges=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 40), st.sampled_from("abc")), max_size=12
    ),
    probes=st.lists(st.integers(0, 400), min_size=1, max_size=20),
)
def test_elementary_intervals_agree_with_a_naive_scan(
    ranges: list[tuple[int, int, str]], probes: list[int]
) -> None:
    built = _build_ranges((first, first + width, name) for first, width, name in ranges)
    for x in probes:
        naive = tuple(sorted({n for first, w, n in ranges if first <= x <= first + w}))
        assert built.at(x) == naive
        hi = x + 7
        overlap = tuple(sorted({n for f, w, n in ranges if f <= hi and x <= f + w}))
        assert built.overlapping(x, hi) == overlap


# --- decisions --------------------------------------------------------------------------------


def test_isp_blocking_denies_a_public_resolver_with_the_list_as_reason() -> None:
    rec = record("[ipv4-addr:value = '8.8.8.8']")
    listed = GUARD.names_for(rec)
    assert listed == ("public-dns-v4",)
    cert, isp = REGISTRY.get("cert"), REGISTRY.get("isp-one")
    decision = INDEX.decide(rec, cert, isp, T0, listed)
    assert not decision.allow
    codes = [r.code_text for r in decision.reasons]
    assert "warninglist:public-dns-v4" in codes
    # without the hit the same object is allowed: the guard is what stops it
    assert INDEX.decide(rec, cert, isp, T0).allow
    # the prosecution agreement opts out of every maintained list
    assert INDEX.decide(rec, cert, REGISTRY.get("prosecution"), T0, listed).allow


def test_members_own_domains_cannot_be_opted_out_of() -> None:
    rec = record("[domain-name:value = 'login.alphabank.example']")
    listed = GUARD.names_for(rec)
    assert listed == ("member-bank-a",)
    decision = INDEX.decide(rec, REGISTRY.get("cert"), REGISTRY.get("prosecution"), T0, listed)
    assert not decision.allow
    assert decision.reasons[0].code is ReasonCode.WARNINGLIST
    assert "no agreement may opt out" in decision.reasons[0].message
    raw = AGREEMENTS.get("cert-to-prosecution-fiu").model_dump(mode="json")
    with pytest.raises(ValidationError, match="never delivered to anyone"):
        Agreement.model_validate({**raw, "warninglist_opt_out": ["member-bank-a"]})


def test_route_step_audits_the_guard_and_delivers_only_under_opt_out() -> None:
    rec = record("[ipv4-addr:value = '198.51.100.23']")
    config = RouteConfig(guard=GUARD)
    result = route_step(rec, None, REGISTRY, INDEX, T0, config, 60.0)
    assert {d.subscriber for d in result.deliveries} == {"prosecution", "fiu"}
    isp = next(a for a in result.audit if a.subscriber == "isp-one")
    assert not isp.allow and not isp.delivered
    assert "warninglist:rfc5735" in {r.code for r in isp.reasons}
    # the same indicator without the guard reaches the ISPs: the test can fail
    unguarded = route_step(rec, None, REGISTRY, INDEX, T0, RouteConfig(), 60.0)
    assert "isp-one" in {d.subscriber for d in unguarded.deliveries}


def test_the_receipt_warns_the_producer() -> None:
    rec = record("[domain-name:value = 'google.com']")
    clean = record("[domain-name:value = 'evil-pay.example']")
    receipt = Receipt(submission_id="s", publisher="cert", received_at=T0, accepted=2, rejected=0)
    warned = guarded_receipt(receipt, [rec, clean], GUARD)
    assert warned is not None
    updated, lists = warned
    [warning] = updated.warnings
    assert rec.object_id in warning and "'google.com'" in warning and "tranco10k" in warning
    assert lists == [GUARD.names_for(rec)]
    assert guarded_receipt(receipt, [clean], GUARD) is None


# --- the property -----------------------------------------------------------------------------

_DOCS = {d["slug"]: d for d in load_lists()}
_SAMPLED: list[tuple[str, str]] = []
_rng = random.Random(16)
for _slug, _doc in sorted(_DOCS.items()):
    entries = [str(e) for e in _doc["list"]]
    for entry in _rng.sample(entries, min(5, len(entries))):
        if _doc["type"] == "cidr":
            net = ipaddress.ip_network(entry, strict=False)
            kind = "ipv4-addr" if net.version == 4 else "ipv6-addr"
            _SAMPLED.append((kind, str(net.network_address)))
        elif not entry.startswith(".") and len(entry) < 32 and "." in entry:
            _SAMPLED.append(("domain-name", entry.lower()))
for _org in REGISTRY.orgs:
    _SAMPLED.extend(("domain-name", f"www.{d}") for d in _org.domains)
    _SAMPLED.extend(("ipv4-addr", n.split("/")[0]) for n in _org.networks)
_OPT_OUTS = sorted(GUARD.names - {n for n in GUARD.names if n.startswith("member-")})


def _pattern(kind: str, value: str) -> str:
    return f"[{kind}:value = '{value}']"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(_SAMPLED),
    opt_outs=st.lists(
        st.lists(st.sampled_from([*_OPT_OUTS, "*"]), max_size=3, unique=True),
        min_size=len(AGREEMENTS),
        max_size=len(AGREEMENTS),
    ),
)
def test_no_listed_value_reaches_a_subscriber_whose_agreement_does_not_opt_out(
    sample: tuple[str, str], opt_outs: list[list[str]]
) -> None:
    kind, value = sample
    try:
        rec = record(_pattern(kind, value))
    except AssertionError:  # a list entry the bus would reject as an indicator anyway
        return
    agreements = []
    for agreement, chosen in zip(AGREEMENTS, opt_outs, strict=True):
        names = ["*"] if "*" in chosen else chosen
        agreements.append(agreement.model_copy(update={"warninglist_opt_out": tuple(names)}))
    index = AgreementIndex(agreements, REGISTRY)
    by_id = {a.id: a for a in agreements}
    hits = set(GUARD.names_for(rec))
    assert hits, f"{value} was sampled from a list but hits none"
    result = route_step(rec, None, REGISTRY, index, T0, RouteConfig(guard=GUARD), 60.0)
    for delivery in result.deliveries:
        agreement = by_id[delivery.agreement_id or ""]
        opted = set(agreement.warninglist_opt_out)
        assert not any(h.startswith("member-") for h in hits), (value, delivery.subscriber)
        assert "*" in opted or hits <= opted, (value, hits, delivery.subscriber, opted)


# --- the attacker: spellings that must not slip past the guard --------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[ipv4-addr:value = '8[.]8[.]8[.]8']", "public-dns-v4"),  # defanged
        ("[ipv4-addr:value = '8.8.8.8/32']", "public-dns-v4"),  # host CIDR
        ("[domain-name:value = 'GOOGLE.COM.']", "tranco10k"),  # case, trailing dot
        ("[url:value = 'hxxp://user@GOOGLE[.]com:8080/x']", "tranco10k"),  # userinfo, port
        ("[ipv4-addr:value = '1.2.3.4'] OR [ipv4-addr:value = '8.8.8.8']", "public-dns-v4"),
        ("[ipv6-addr:value = '::ffff:8.8.8.8']", "public-dns-v4"),  # IPv4-mapped IPv6
        ("[ipv6-addr:value = '64:ff9b::808:808']", "public-dns-v4"),  # NAT64 (RFC 6052)
        ("[url:value = 'http://134744072/']", "public-dns-v4"),  # 8.8.8.8 as one number
        ("[url:value = 'http://0x08080808/x']", "public-dns-v4"),  # ... in hex
        ("[url:value = 'http://8.8.2056/']", "public-dns-v4"),  # ... with a short form
        ("[url:value = 'http://[::ffff:8.8.8.8]/']", "public-dns-v4"),
        ("[file:hashes.'MD5' = 'D41D8CD98F00B204E9800998ECF8427E']", "empty-hashes"),
    ],
)
def test_other_spellings_of_a_listed_value_still_hit(pattern: str, expected: str) -> None:
    rec = record(pattern)
    assert expected in GUARD.names_for(rec), (pattern, rec.canonical_pattern)


def test_the_linter_flags_an_opt_out_of_a_list_the_guard_does_not_load() -> None:
    from stixbus.core.lint import FindingCode, check_agreements

    raw = AGREEMENTS.get("cert-to-prosecution-fiu").model_dump(mode="json")
    typo = Agreement.model_validate({**raw, "warninglist_opt_out": ["tranco-10k", "rfc5735"]})
    codes = [f for f in check_agreements([typo], REGISTRY, T0) if f.agreement_id == typo.id]
    flagged = [f for f in codes if f.code is FindingCode.UNKNOWN_WARNINGLIST]
    assert len(flagged) == 1 and "'tranco-10k'" in flagged[0].message
    assert not any(
        f.code is FindingCode.UNKNOWN_WARNINGLIST
        for f in check_agreements(AGREEMENTS, REGISTRY, T0)
    )


def test_a_tick_on_a_decoded_state_still_applies_the_guard() -> None:
    from stixbus.core.route_step import Tick
    from stixbus.core.state_codec import decode_state, encode_state

    rec = record("[ipv4-addr:value = '8.8.8.8']")
    config = RouteConfig(guard=GUARD)
    first = route_step(rec, None, REGISTRY, INDEX, T0, config, 60.0)
    assert first.state is not None
    state = decode_state(encode_state(first.state))  # as the route table gives it back
    later = T0 + timedelta(days=1)
    again = route_step(Tick(), state, REGISTRY, AgreementIndex(AGREEMENTS, REGISTRY), later,
                       config, 60.0)  # fmt: skip
    assert not {"isp-one", "isp-two", "bank-a"} & {d.subscriber for d in again.deliveries}
    # without the guard the tick would deliver to them: the test can fail
    unguarded = route_step(Tick(), state, REGISTRY, INDEX, later, RouteConfig(), 60.0)
    assert "isp-one" in {d.subscriber for d in unguarded.deliveries}
