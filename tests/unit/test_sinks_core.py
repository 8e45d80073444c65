"""The pure sink renderers (stixbus/core/sinks/): current set, RPZ, EDL, Suricata, Zeek, MISP
feed, safety limit.  Suricata and Zeek are not packaged in Debian 12, so their files are
checked against the formats their documentation gives (docs/sinks.md names the pages)."""

from __future__ import annotations

import base64
import ipaddress
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from egress.sinks.subscriber import Safety, SubscriberSink
from schemas.sinks import Format, RpzAction, SubscriberSinks
from schemas.tlp import TLP
from stixbus.core.sinks import SinkView, edl, misp_feed, rpz, safety, suricata, zeek
from stixbus.core.sinks.current_set import CurrentSet, Entry, Kind, entries_of
from stixbus.metrics import parse_metrics

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SHA256 = "ab" * 32
MD5 = "cd" * 16


def indicator(pattern: str, n: int | None = None, **props: Any) -> dict[str, Any]:
    object_id = (
        f"indicator--00000000-0000-4000-8000-{n:012d}"
        if n is not None
        else f"indicator--{uuid.uuid4()}"
    )
    return {
        "type": "indicator",
        "id": object_id,
        "created": "2026-11-01T08:00:00.000Z",
        "modified": "2026-11-01T08:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00.000Z",
        **props,
    }


def domain(name: str, n: int | None = None, **props: Any) -> dict[str, Any]:
    return indicator(f"[domain-name:value = '{name}']", n, **props)


def view_of(*objects: dict[str, Any], now: datetime = NOW, serial: int = 7) -> SinkView:
    current = CurrentSet()
    current.apply_all(objects)
    return SinkView.of("isp-one", current, now, serial)


# --- current set ---------------------------------------------------------------------------
def test_entries_use_the_bus_canonicaliser() -> None:
    assert entries_of("[domain-name:value = 'EVIL.Example.COM.']") == (
        Entry(Kind.DOMAIN, "evil.example.com"),
    )
    assert entries_of("[url:value = 'hxxp://Bad[.]example:80/a/../b']") == (
        Entry(Kind.URL, "http://bad.example/b"),
    )
    assert entries_of("[ipv4-addr:value = '192.0.2.7/32']") == (Entry(Kind.IPV4, "192.0.2.7"),)


def test_entries_per_or_term_and_file_hash_conjunctions_only() -> None:
    assert set(
        entries_of("[domain-name:value = 'a.example' OR ipv6-addr:value = '2001:DB8::1']")
    ) == {
        Entry(Kind.DOMAIN, "a.example"),
        Entry(Kind.IPV6, "2001:db8::1"),
    }
    both = f"[file:hashes.'SHA-256' = '{SHA256.upper()}' AND file:hashes.MD5 = '{MD5}']"
    assert set(entries_of(both)) == {Entry(Kind.SHA256, SHA256), Entry(Kind.MD5, MD5)}
    # A URL *and* an IP is not one list line; blocking either alone would over-block.
    assert entries_of("[url:value = 'http://x.example/' AND ipv4-addr:value = '192.0.2.1']") == ()
    # Outside the fast subset (qualifiers), e-mail addresses, invalid patterns: nothing.
    assert entries_of("[domain-name:value = 'a.example'] REPEATS 2 TIMES") == ()
    assert entries_of("[email-addr:value = 'x@a.example']") == ()
    assert entries_of("[domain-name:value = ") == ()


def test_latest_version_wins_and_revocation_is_final() -> None:
    current = CurrentSet()
    first = domain("a.example", 1)
    assert current.apply(first)
    newer = {
        **first,
        "modified": "2026-11-02T00:00:00Z",
        "pattern": "[domain-name:value = 'b.example']",
    }
    assert current.apply(newer)
    assert not current.apply(first)  # an older version replayed later
    assert not current.apply(newer)  # a redelivery
    assert [e.value for item in current.active(NOW) for e in item.entries] == ["b.example"]
    revoked = {**newer, "modified": "2026-11-03T00:00:00Z", "revoked": True}
    assert current.apply(revoked)
    assert list(current.active(NOW)) == []
    assert not current.apply({**newer, "modified": "2026-11-04T00:00:00Z"})  # no un-revoking
    assert [item.id for item in current.removed(NOW)] == [first["id"]]


def test_expiry_and_not_yet_valid() -> None:
    expired = domain("old.example", 1, valid_until="2026-11-30T00:00:00Z")
    later = domain("later.example", 2, valid_from="2026-12-05T00:00:00Z")
    soon = domain("soon.example", 3, valid_until="2026-12-01T12:00:05Z")
    current = CurrentSet()
    current.apply_all([expired, later, soon])
    assert [e.value for item in current.active(NOW) for e in item.entries] == ["soon.example"]
    assert current.next_change(NOW) == datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)
    assert list(current.active(NOW + timedelta(seconds=6))) == []
    assert [
        e.value for item in current.active(datetime(2026, 12, 6, tzinfo=UTC)) for e in item.entries
    ] == ["later.example"]


def test_tlp_from_marking_ids_and_delivered_definitions() -> None:
    custom = "marking-definition--11111111-1111-4111-8111-111111111111"
    current = CurrentSet()
    current.apply({"type": "marking-definition", "id": custom, "name": "TLP:AMBER"})
    current.apply(domain("a.example", 1, object_marking_refs=[TLP.GREEN.marking_id]))
    current.apply(domain("b.example", 2, object_marking_refs=[custom]))
    assert [item.tlp for item in current.active(NOW)] == [TLP.GREEN, TLP.AMBER]


# --- RPZ -----------------------------------------------------------------------------------
def test_rpz_zone_names_url_hosts_and_actions() -> None:
    view = view_of(
        domain("evil.example", 1),
        indicator("[url:value = 'https://phish.example/login?x=1']", 2),
        indicator("[url:value = 'http://192.0.2.9/x']", 3),  # an IP host: not a DNS name
    )
    text = rpz.render(view, SubscriberSinks(org="isp-one")).files["rpz.zone"].decode()
    assert "$ORIGIN isp-one.rpz.stixbus.\n" in text
    assert "@ IN SOA localhost. hostmaster.localhost. 7 " in text
    for line in (
        "evil.example IN CNAME .",
        "*.evil.example IN CNAME .",
        "phish.example IN CNAME .",
    ):
        assert line + "\n" in text
    assert "192.0.2.9" not in text
    targets = {
        RpzAction.NODATA: "CNAME *.",
        RpzAction.DROP: "CNAME rpz-drop.",
        RpzAction.PASSTHRU: "CNAME rpz-passthru.",
        RpzAction.TCP_ONLY: "CNAME rpz-tcp-only.",
    }
    for action, rdata in targets.items():
        config = SubscriberSinks(org="isp-one", rpz_action=action, rpz_subdomains=False)
        assert rpz.records(view, config) == {("evil.example", rdata), ("phish.example", rdata)}
    garden = SubscriberSinks(
        org="isp-one", rpz_action="redirect", rpz_redirect_to="walled.isp.example"
    )
    assert ("evil.example", "CNAME walled.isp.example.") in rpz.records(view, garden)
    with pytest.raises(ValueError, match="rpz_redirect_to"):
        SubscriberSinks(org="isp-one", rpz_action="redirect")


def test_rpz_skips_names_too_long_for_the_zone() -> None:
    long_name = ".".join(["a" * 60] * 4) + ".example"  # 253 characters: no room for the zone
    view = view_of(domain(long_name, 1), domain("ok.example", 2))
    assert {owner for owner, _ in rpz.records(view, SubscriberSinks(org="isp-one"))} == {
        "ok.example",
        "*.ok.example",
    }


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_next_serial_is_always_ahead_in_serial_arithmetic(previous: int, now_unix: int) -> None:
    serial = rpz.next_serial(previous, now_unix)
    assert 0 < (serial - previous) % 2**32 < 2**31


def test_zone_text_parses_back_and_ixfr_steps_chain() -> None:
    records = frozenset({("a.example", "CNAME ."), ("*.a.example", "CNAME .")})
    assert rpz.parse_zone_text(rpz.zone_text("z.", 42, records)) == (42, records)
    assert rpz.parse_zone_text("not a zone") is None
    one = rpz.diff(1, frozenset(), 2, records)
    two = rpz.diff(2, records, 3, frozenset({("b.example", "CNAME .")}))
    assert rpz.ixfr_steps([one, two], 1, 3) == [one, two]
    assert rpz.ixfr_steps([one, two], 2, 3) == [two]
    assert rpz.ixfr_steps([one, two], 3, 3) == []
    assert rpz.ixfr_steps([one, two], 0, 3) is None  # too old: the whole zone


# --- EDL -----------------------------------------------------------------------------------
def test_edl_lists_aggregate_cidrs() -> None:
    ips = ["192.0.2.0/25", "192.0.2.128/25", "198.51.100.7", "198.51.100.0/24", "203.0.113.5"]
    objects = [indicator(f"[ipv4-addr:value = '{ip}']", i) for i, ip in enumerate(ips)]
    objects += [
        indicator("[ipv6-addr:value = '2001:db8::/33']", 10),
        indicator("[ipv6-addr:value = '2001:db8:8000::/33']", 11),
        domain("evil.example", 12),
        indicator("[url:value = 'http://evil.example/a']", 13),
    ]
    rendered = edl.render(view_of(*objects), SubscriberSinks(org="isp-one"))
    assert rendered.files["ipv4.txt"] == b"192.0.2.0/24\n198.51.100.0/24\n203.0.113.5\n"
    assert rendered.files["ipv6.txt"] == b"2001:db8::/32\n"
    assert rendered.files["domains.txt"] == b"evil.example\n"
    assert rendered.files["urls.txt"] == b"http://evil.example/a\n"
    assert rendered.counts == {"ipv4": 3, "ipv6": 1, "domains": 1, "urls": 1}
    for line in rendered.files["ipv4.txt"].decode().split():
        ipaddress.ip_network(line)  # every line is a valid address or block


# --- Suricata (format: docs.suricata.io rules/datasets, "Data types" and file format) ------
def test_suricata_datasets_follow_the_documented_format() -> None:
    view = view_of(
        indicator(f"[file:hashes.'SHA-256' = '{SHA256}']", 1),
        indicator(f"[file:hashes.MD5 = '{MD5.upper()}']", 2),
        domain("evil.example", 3),
        domain("xn--80ak6aa92e.example", 4),
    )
    files = suricata.render(view, SubscriberSinks(org="isp-one")).files
    assert all(
        re.fullmatch(r"[0-9a-f]{64}", item)
        for item in files["suricata/sha256.lst"].decode().split("\n")[:-1]
    )
    assert files["suricata/md5.lst"] == (MD5 + "\n").encode()
    lines = files["suricata/domains.lst"].decode().splitlines()
    # type string: one base64-encoded value a line
    assert [base64.b64decode(item, validate=True).decode() for item in lines] == [
        "evil.example",
        "xn--80ak6aa92e.example",
    ]


# --- Zeek (format: docs.zeek.org Intel framework, "Intelligence Data" input file) ----------
ZEEK_TYPES = {"Intel::ADDR", "Intel::SUBNET", "Intel::DOMAIN", "Intel::URL", "Intel::FILE_HASH"}


def test_zeek_intel_file_follows_the_documented_header() -> None:
    view = view_of(
        domain("evil.example", 1),
        indicator("[url:value = 'http://evil.example/login']", 2),
        indicator("[ipv4-addr:value = '192.0.2.0/24']", 3),
        indicator("[ipv6-addr:value = '2001:db8::1']", 4),
        indicator(f"[file:hashes.'SHA-256' = '{SHA256}']", 5),
    )
    lines = zeek.render(view, SubscriberSinks(org="isp-one")).files["zeek/intel.dat"].decode()
    header, *rows = lines.rstrip("\n").split("\n")
    assert header == "#fields\tindicator\tindicator_type\tmeta.source"
    parsed = {tuple(r.split("\t")[:2]): r.split("\t")[2] for r in rows}
    assert all(len(r.split("\t")) == 3 for r in rows)
    assert {t for _, t in parsed} <= ZEEK_TYPES
    assert set(parsed) == {
        ("evil.example", "Intel::DOMAIN"),
        ("evil.example/login", "Intel::URL"),  # Zeek's URLs carry no scheme
        ("192.0.2.0/24", "Intel::SUBNET"),
        ("2001:db8::1", "Intel::ADDR"),
        (SHA256, "Intel::FILE_HASH"),
    }
    assert (
        parsed[("evil.example", "Intel::DOMAIN")]
        == "stixbus:indicator--00000000-0000-4000-8000-000000000001"
    )


# --- MISP feed (read back with PyMISP) -----------------------------------------------------
def test_misp_feed_reads_back_with_pymisp() -> None:
    from pymisp import MISPEvent

    kept = domain(
        "evil.example", 1, labels=["phishing"], object_marking_refs=[TLP.AMBER.marking_id]
    )
    gone = indicator(
        "[ipv4-addr:value = '192.0.2.1']", 2, object_marking_refs=[TLP.GREEN.marking_id]
    )
    other_day = domain(
        "next.example", 3, created="2026-11-02T09:00:00Z", modified="2026-11-02T09:00:00Z"
    )
    revoked = {**gone, "modified": "2026-11-05T00:00:00Z", "revoked": True}
    files = misp_feed.render(
        view_of(kept, gone, revoked, other_day), SubscriberSinks(org="isp-one")
    ).files
    manifest = orjson.loads(files["misp/manifest.json"])
    assert len(manifest) == 2  # one event per day
    values: dict[str, Any] = {}
    for event_uuid, head in manifest.items():
        event = MISPEvent()
        event.load(files[f"misp/{event_uuid}.json"])
        assert event.uuid == event_uuid and event.info == head["info"]
        values.update({a.value: (a, event) for a in event.attributes})
    attribute, event = values["evil.example"]
    assert attribute.type == "domain" and attribute.to_ids and not attribute.deleted
    assert {t.name for t in attribute.tags} == {"tlp:amber", "phishing"}
    assert "tlp:amber" in {t.name for t in event.tags}  # the event's highest TLP
    ip, _ = values["192.0.2.1"]
    assert ip.type == "ip-dst" and ip.deleted and not ip.to_ids  # deletion on revocation
    assert values["next.example"][1].date.isoformat() == "2026-11-02"


# --- safety --------------------------------------------------------------------------------
def test_safety_check() -> None:
    assert safety.check(None, {"domains": 10_000}, 0.5, 100).ok  # first publication
    assert safety.check({"domains": 50}, {"domains": 0}, 0.5, 100).ok  # small lists move freely
    verdict = safety.check({"domains": 1000}, {"domains": 400}, 0.5, 100)
    assert not verdict.ok and "shrank from 1000 to 400" in verdict.reasons[0]
    assert not safety.check({"domains": 100}, {"domains": 1000}, 0.5, 100).ok  # grew 10x
    assert safety.check({"domains": 1000}, {"domains": 600}, 0.5, 100).ok


def _held(org: str, sink: str) -> float:
    snapshot = parse_metrics(generate_latest().decode())
    return snapshot.by("stixbus_sink_held", "sink", subscriber=org).get(sink, 0.0)


def test_mass_revocation_trips_the_safety_limit(tmp_path: Path) -> None:
    config = SubscriberSinks(org="isp-two", formats=(Format.RPZ, Format.EDL))
    sink = SubscriberSink(config, tmp_path, Safety(max_change=0.5, min_entries=100))
    objects = [domain(f"d{i}.example", i) for i in range(200)]
    for obj in objects:
        sink.current.apply(obj)
    first = sink.publish(NOW)
    assert first.held == () and sink.zone is not None
    serial = sink.zone.serial
    published = (tmp_path / "isp-two" / "domains.txt").read_bytes()
    for obj in objects[:150]:  # an accidental mass revocation
        sink.current.apply({**obj, "modified": "2026-11-20T00:00:00Z", "revoked": True})
    outcome = sink.publish(NOW + timedelta(seconds=1))
    assert set(outcome.held) == {Format.RPZ, Format.EDL}
    assert "shrank from 200 to 50" in outcome.reasons[0]
    assert (tmp_path / "isp-two" / "domains.txt").read_bytes() == published  # still served
    assert sink.zone.serial == serial  # and the resolvers keep the old zone
    assert _held("isp-two", "edl") == 1.0
    # A restart compares against what was published, not against nothing.
    restarted = SubscriberSink(config, tmp_path, Safety(max_change=0.5, min_entries=100))
    restarted.current.apply_all(sink_objects := [*objects[150:]])
    assert sink_objects and restarted.publish(NOW + timedelta(seconds=2)).held
    # An operator who means it: hold_seconds lets it out after the wait (0 = never).
    patient = SubscriberSink(config, tmp_path, Safety(0.5, 100, hold_seconds=0.01))
    patient.current.apply_all(objects[150:])
    assert patient.publish(NOW + timedelta(seconds=3)).held
    import time

    time.sleep(0.02)
    assert patient.publish(NOW + timedelta(seconds=4)).held == ()
    assert (tmp_path / "isp-two" / "domains.txt").read_text().count("\n") == 50
    assert _held("isp-two", "edl") == 0.0


@pytest.mark.parametrize(
    "url",
    [
        "hxxps://User:Pw@Login.Example:8443/a?b=c",
        "http://evil.example",
        "ftp://files.example:21/x",
        "http://[2001:DB8::1]:8080/x",
        "http://192.0.2.1/x",
        "https://xn--80ak6aa92e.example/",
    ],
)
def test_fast_url_host_agrees_with_urlsplit(url: str) -> None:
    from urllib.parse import urlsplit

    from stixbus.core.canonical import canonical_url

    canonical = canonical_url(url).value
    host = urlsplit(canonical).hostname
    assert rpz.listed_names([], [canonical]) == ([] if rpz._is_ip_literal(host or "") else [host])
