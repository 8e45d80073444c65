# ruff: noqa: E501  (tables of STIX test data read better unwrapped)
"""The fast pattern parser: canonical forms, the fallback, and agreement with stix2patterns."""

from __future__ import annotations

import pytest
from stix2patterns.validator import validate as official_validate

from stixbus.core.pattern import PatternError, _fast_parse, parse_pattern

SHA256 = "a" * 64


@pytest.mark.parametrize(
    ("pattern", "canonical", "types"),
    [
        (
            "[domain-name:value = 'EVIL.Example.COM.']",
            "[domain-name:value = 'evil.example.com']",
            ("domain-name",),
        ),
        (
            "[url:value = 'hxxps://evil[.]com:443/a/./b/../c']",
            "[url:value = 'https://evil.com/a/c']",
            ("url",),
        ),
        ("[ipv4-addr:value = '10.0.0.1/32']", "[ipv4-addr:value = '10.0.0.1']", ("ipv4-addr",)),
        ("[ipv4-addr:value = '10.0.0.0/8']", "[ipv4-addr:value = '10.0.0.0/8']", ("ipv4-addr",)),
        (
            "[ipv6-addr:value = '2001:DB8:0:0::1/128']",
            "[ipv6-addr:value = '2001:db8::1']",
            ("ipv6-addr",),
        ),
        (
            f"[file:hashes.'SHA-256' = '{SHA256.upper()}']",
            f"[file:hashes.'SHA-256' = '{SHA256}']",
            ("file",),
        ),
        (
            "[file:hashes.MD5 = 'D41D8CD98F00B204E9800998ECF8427E']",
            "[file:hashes.'MD5' = 'd41d8cd98f00b204e9800998ecf8427e']",
            ("file",),
        ),
        (
            "[email-addr:value = 'Phisher@EVIL.com']",
            "[email-addr:value = 'Phisher@evil.com']",
            ("email-addr",),
        ),
        (
            "[domain-name:value = 'b.com' OR domain-name:value = 'a.com']",
            "[domain-name:value = 'a.com' OR domain-name:value = 'b.com']",
            ("domain-name",),
        ),
        (
            "[url:value = 'http://x.org/' AND domain-name:value = 'x.org' OR domain-name:value = 'y.org']",
            "[domain-name:value = 'x.org' AND url:value = 'http://x.org/' OR domain-name:value = 'y.org']",
            ("domain-name", "url"),
        ),
        (
            "[domain-name:value = 'münchen.de']",
            "[domain-name:value = 'xn--mnchen-3ya.de']",
            ("domain-name",),
        ),
        ("[domain-name:value = 'it\\'s.com']", None, None),
    ],
)
def test_canonical_forms(
    pattern: str, canonical: str | None, types: tuple[str, ...] | None
) -> None:
    if canonical is None:
        with pytest.raises(PatternError):
            parse_pattern(pattern)
        return
    parsed = parse_pattern(pattern)
    assert parsed.fast
    assert parsed.canonical == canonical
    assert parsed.observable_types == types
    assert official_validate(parsed.canonical, stix_version="2.1"), (
        "canonical form must stay valid STIX"
    )


def test_commutative_forms_share_one_canonical_text() -> None:
    a = parse_pattern("[domain-name:value = 'a.com' OR url:value = 'http://B.com']")
    b = parse_pattern("[url:value='hxxp://b[.]com/'   OR   domain-name:value = 'A.COM']")
    assert a.canonical == b.canonical


@pytest.mark.parametrize(
    "pattern",
    [
        "[process:pid = 4]",
        "[ipv4-addr:value = '1.2.3.4'] AND [url:value = 'http://x.com/']",
        "([domain-name:value = 'a.com'])",
        "[domain-name:value = 'a.com'] WITHIN 300 SECONDS",
        "[file:size > 1000]",
        "[network-traffic:dst_ref.value = '1.2.3.4']",
    ],
)
def test_uncommon_shapes_fall_back_to_the_official_grammar(pattern: str) -> None:
    assert _fast_parse(pattern) is None
    parsed = parse_pattern(pattern)
    assert not parsed.fast


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "[",
        "[domain-name:value = 'a.com'",
        "[domain-name:value = a.com]",
        "[domain-name:value = 'a.com' AND]",
        "[ipv4-addr:value = '999.1.1.1']",
        "[ipv4-addr:value = '10.0.0.1/8']",
        "[ipv6-addr:value = '1.2.3.4']",
        "[file:hashes.MD5 = 'abc']",
        "[file:hashes.'SHA-256' = 'zz']",
        "[url:value = 'not a url']",
        "[domain-name:value = 'bad_label-.com']",
        "[email-addr:value = 'no-at-sign']",
        "[Domain-Name:value = 'a.com']",
        "[domain-name:value = 'a.com']; DROP TABLE indicators",
        "[url:value = 'http://a.com/'] ' OR '1'='1",
    ],
)
def test_invalid_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(PatternError) as error:
        parse_pattern(pattern)
    assert str(error.value)


def test_fast_parser_never_accepts_what_the_grammar_rejects() -> None:
    """Mutations of valid patterns: whatever the fast parser accepts, stix2patterns accepts."""
    seeds = [
        "[domain-name:value = 'a.com']",
        "[url:value = 'http://a.com/x' OR ipv4-addr:value = '1.2.3.4']",
        f"[file:hashes.'SHA-256' = '{SHA256}' AND file:name = 'x.exe']",
    ]
    edits = ["'", "\\", "]", "[", " ", "AND ", " OR", ":", "=", "\n", "\t", "--", "."]
    checked = 0
    for seed in seeds:
        for position in range(len(seed) + 1):
            for edit in edits:
                for mutated in (
                    seed[:position] + edit + seed[position:],
                    seed[:position] + seed[position + 1 :],
                ):
                    try:
                        parsed = _fast_parse(mutated)
                    except PatternError:
                        continue
                    if parsed is not None:
                        checked += 1
                        assert official_validate(mutated, stix_version="2.1"), mutated
    assert checked > 50


def test_lexical_pre_check_only_rejects_what_the_grammar_rejects() -> None:
    """The bracket/quote scan that spares the ANTLR parser must be sound."""
    from stixbus.core.pattern import _unbalanced

    seeds = [
        "[domain-name:value = 'a[b'] AND ([ipv4-addr:value = '1.2.3.4'] OR [x:y = 'it\\'s'])",
        "[network-traffic:src_ref.value = '1.2.3.4' AND file:hashes[*] = 'x']",
        "[file:hashes.'SHA-256' = '" + "a" * 64 + "'] WITHIN 5 SECONDS",
    ]
    flagged = 0
    for seed in seeds:
        assert _unbalanced(seed)[0] is None
        for position in range(len(seed) + 1):
            for edit in ("'", "[", "]", "(", ")", "\\"):
                mutated = seed[:position] + edit + seed[position:]
                if _unbalanced(mutated)[0] is not None:
                    flagged += 1
                    assert not official_validate(mutated, stix_version="2.1"), mutated
    assert flagged > 100
