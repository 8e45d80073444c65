"""Observable canonicalisation, SCO ids and the dedup key."""

from __future__ import annotations

import uuid

import pytest

from stixbus.core.canonical import (
    CanonicalError,
    canonical_domain,
    canonical_email,
    canonical_hash,
    canonical_ip,
    canonical_url,
    dedup_key,
    deterministic_sco_id,
    refang,
)


@pytest.mark.parametrize(
    ("defanged", "fanged"),
    [
        ("hxxp://evil[.]com/a", "http://evil.com/a"),
        ("hXXps[:]//evil(.)com", "https://evil.com"),
        ("evil[dot]com", "evil.com"),
        ("evil(dot)com", "evil.com"),
        ("user[@]evil[.]com", "user@evil.com"),
        ("fxp://files{.}evil.org", "ftp://files.evil.org"),
        ("192.168.1[.]1", "192.168.1.1"),
        ("plain.example.org", "plain.example.org"),
    ],
)
def test_refang(defanged: str, fanged: str) -> None:
    assert refang(defanged) == fanged


def test_domains() -> None:
    assert canonical_domain("WWW.Example.ORG.").value == "www.example.org"
    assert canonical_domain("bücher.example").value == "xn--bcher-kva.example"
    assert canonical_domain("xn--bcher-kva.example").value == "xn--bcher-kva.example"
    with pytest.raises(CanonicalError):
        canonical_domain("-bad-.com")


def test_mixed_script_homograph_is_flagged() -> None:
    cyrillic_a = "\u0430"
    result = canonical_domain(f"{cyrillic_a}pple.com")
    assert result.value.startswith("xn--")
    assert result.warnings and "homograph" in result.warnings[0]
    assert not canonical_domain("münchen.de").warnings  # Latin only: no warning


def test_ips() -> None:
    assert canonical_ip("192.0.2.1/32", 4).value == "192.0.2.1"
    assert canonical_ip("2001:DB8:0000::0001", 6).value == "2001:db8::1"
    assert canonical_ip("2001:db8::1/128", 6).value == "2001:db8::1"
    assert canonical_ip("2001:db8::/32", 6).value == "2001:db8::/32"
    for bad, version in (
        ("192.0.2.1/24", 4),
        ("300.1.1.1", 4),
        ("010.1.1.1", 4),
        ("::1", 4),
        ("1.2.3.4", 6),
    ):
        with pytest.raises(CanonicalError):
            canonical_ip(bad, version)


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTP://Example.COM:80/a/b/../c/./d", "http://example.com/a/c/d"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("http://example.com/%7euser/%2f?q=%3d", "http://example.com/~user/%2F?q=%3D"),
        ("http://example.com/x#fragment", "http://example.com/x"),
        ("http://[2001:DB8::1]:8080/", "http://[2001:db8::1]:8080/"),
        ("http://192.0.2.1/x", "http://192.0.2.1/x"),
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),
    ],
)
def test_urls(url: str, canonical: str) -> None:
    assert canonical_url(url).value == canonical


def test_url_without_host_is_an_error() -> None:
    with pytest.raises(CanonicalError):
        canonical_url("/just/a/path")


def test_email_and_hashes() -> None:
    assert canonical_email("Alice@EXAMPLE.com").value == "Alice@example.com"
    assert (
        canonical_hash("MD5", "D41D8CD98F00B204E9800998ECF8427E").value
        == "d41d8cd98f00b204e9800998ecf8427e"
    )
    with pytest.raises(CanonicalError):
        canonical_hash("SHA-1", "abc")


def test_sco_ids_follow_stix_2_1_section_2_9() -> None:
    # The example from the STIX 2.1 spec, §2.9 (ipv4-addr 198.51.100.3 is not given; use
    # the stix2 library as the reference implementation).
    import stix2

    for obj in (
        {"type": "ipv4-addr", "value": "198.51.100.3"},
        {"type": "domain-name", "value": "example.com"},
        {"type": "url", "value": "https://example.com/"},
        {"type": "file", "hashes": {"SHA-256": "a" * 64}},
    ):
        reference = stix2.parse({**obj, "spec_version": "2.1"}, allow_custom=True)
        assert deterministic_sco_id(dict(obj)) == reference.id


def test_dedup_key_uses_the_bus_namespace() -> None:
    namespace = uuid.UUID("6abc6956-1afb-4fee-8ee4-f9c6d301c741")
    pattern = "[domain-name:value = 'a.com']"
    key = dedup_key(pattern, namespace)
    assert key == str(uuid.uuid5(namespace, pattern))
    assert key != str(uuid.uuid5(uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7"), pattern))
