"""The blocklist connector canonicalises with the core, rejects bad lines one by one, and moves
its ids to a new id scheme by revoking the old ones (no broker: publishing is faked)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import Report, StateFile, Submitter
from connectors.blocklist import (
    ID_SCHEME,
    BlocklistConfig,
    IndicatorType,
    indicator_id,
    parse_lines,
    parse_value,
    run_once,
)
from stixbus.core.canonical import CanonicalError, canonical_observable
from stixbus.kafka.client import Published
from stixbus.secret_files import connector_id_key
from stixbus.settings import Settings
from tests.helpers.paths import FIXTURES, example_registry


def KEY() -> bytes:
    return connector_id_key(Settings(), "cert")


# Inputs on which the connector's old canonicaliser and the core's disagreed, and others that
# are easy to get wrong: dot segments, %2f, host-bit CIDRs, localhost, defanging, ports.
TRICKY: list[tuple[IndicatorType, str, str]] = [
    (IndicatorType.URL, "url", "http://a.example/x/./y/../z"),
    (IndicatorType.URL, "url", "http://a.example/a%2fb%7e"),
    (IndicatorType.URL, "url", "HTTP://A.Example:80"),
    (IndicatorType.URL, "url", "https://a.example:443/#frag"),
    (IndicatorType.URL, "url", "hxxp://evil[.]com/x"),
    (IndicatorType.URL, "url", "http://evil.example:99999/"),
    (IndicatorType.URL, "url", "http://localhost/"),
    (IndicatorType.URL, "url", "ftps://files.example:990/"),
    (IndicatorType.URL, "url", "http://user:pw@[2001:DB8::1]:8080/p"),
    (IndicatorType.URL, "url", "http://[::1"),
    (IndicatorType.URL, "url", "http://bücher.example/"),
    (IndicatorType.DOMAIN, "domain-name", "localhost"),
    (IndicatorType.DOMAIN, "domain-name", "Evil[.]Example."),
    (IndicatorType.DOMAIN, "domain-name", "xn--bcher-kva.example"),
    (IndicatorType.DOMAIN, "domain-name", "-bad-.example"),
    (IndicatorType.IP, "ipv4-addr", "192.0.2.1/24"),
    (IndicatorType.IP, "ipv4-addr", "192.0.2.0/24"),
    (IndicatorType.IP, "ipv4-addr", "192.0.2.1/32"),
    (IndicatorType.IP, "ipv4-addr", "198.51.100[.]7"),
    (IndicatorType.IP, "ipv4-addr", "300.1.1.1"),
    (IndicatorType.IP, "ipv6-addr", "2001:DB8:0::7/128"),
    (IndicatorType.IP, "ipv6-addr", "2001:db8::1/64"),
]


def _same(path: tuple[str, ...], object_type: str, kind: IndicatorType, raw: str) -> None:
    """The blocklist's canonical value is the core's, and they refuse the same inputs."""
    try:
        core: str | None = canonical_observable(object_type, path, raw).value
    except CanonicalError:
        core = None
    try:
        mine: str | None = parse_value(raw, kind)[1]
    except CanonicalError:
        mine = None
    assert mine == core


@pytest.mark.parametrize(("kind", "object_type", "raw"), TRICKY)
def test_blocklist_and_core_canonical_forms_are_the_same(
    kind: IndicatorType, object_type: str, raw: str
) -> None:
    _same(("value",), object_type, kind, raw)


@pytest.mark.parametrize(
    ("algorithm", "kind", "raw"),
    [
        ("MD5", IndicatorType.MD5, "D41D8CD98F00B204E9800998ECF8427E"),
        ("MD5", IndicatorType.MD5, "d41d8cd98f00b204e9800998ecf8427"),
        ("SHA-1", IndicatorType.SHA1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("SHA-256", IndicatorType.SHA256, "zz" * 32),
    ],
)
def test_blocklist_and_core_hashes_agree(algorithm: str, kind: IndicatorType, raw: str) -> None:
    _same(("hashes", algorithm), "file", kind, raw)


def _config(tmp: Path, **kw: Any) -> BlocklistConfig:
    return BlocklistConfig.model_validate(
        {
            "name": "messy",
            "org": "cert",
            "source": str(FIXTURES / "blocklists/messy.txt"),
            "state_file": str(tmp / "state.json"),
            **kw,
        }
    )


GOOD = [
    ("url", "http://evil.example/x", 2),
    ("domain-name", "evil.example", 4),
    ("ipv4-addr", "198.51.100.7", 5),
    ("url", "http://evil.example/a/c%2F?q=~", 6),
    ("url", "https://pay.example/login", 10),
    ("ipv6-addr", "2001:db8::1", 12),
]
BAD = {
    3: "port 99999 is out of range",
    7: "not a valid IPv4 address",
    8: "is not a URL, domain, IP/CIDR",
    9: "host bits zero",
    11: "not an md5/sha1/sha256 hash",
    13: "not a valid URL",
}


def test_messy_list_keeps_every_good_line_and_reports_each_bad_one(tmp_path: Path) -> None:
    report = Report("blocklist", "messy", "cert")
    text = (FIXTURES / "blocklists/messy.txt").read_text()
    entries = list(parse_lines(text, _config(tmp_path), report))
    assert [(e.kind, e.value, e.line) for e in entries] == GOOD
    assert [r.pointer for r in report.rejections] == [f"/line/{n}" for n in BAD]
    for rejection, (number, rule) in zip(report.rejections, BAD.items(), strict=True):
        assert f"messy line {number}:" in rejection.message
        assert rule in rejection.message, rejection.message


def _run(config: BlocklistConfig) -> tuple[Report, list[dict[str, Any]]]:
    settings = Settings()
    org = example_registry().get("cert")
    sent: list[dict[str, Any]] = []

    async def fake_publish(
        conn: dict[str, Any], topic: str, payload: bytes, sid: str | None
    ) -> Published:
        sent.extend(orjson.loads(payload)["objects"])
        assert sid is not None
        return Published(sid, topic, 0, len(sent))

    async def go() -> Report:
        report = Report("blocklist", config.name, "cert")
        submitter = Submitter(settings, org, config.name, report, publish_fn=fake_publish)
        await run_once(config, settings, "cert", report, submitter)
        return report

    return asyncio.run(go()), sent


def test_messy_list_imports_the_good_lines(tmp_path: Path) -> None:
    report, sent = _run(_config(tmp_path))
    assert sorted(o["pattern"] for o in sent) == sorted(
        f"[{kind}:value = '{value}']" for kind, value, _ in GOOD
    )
    assert len(report.rejections) == len(BAD)
    assert {o["id"] for o in sent} == {
        indicator_id("messy", kind, value, id_key=KEY()) for kind, value, _ in GOOD
    }


def test_new_id_scheme_revokes_every_old_id_and_republishes_the_live_entries(
    tmp_path: Path,
) -> None:
    source = tmp_path / "list.txt"
    source.write_text("http://a.example/x/../y\nhttp://b.example/\nc.example\n")
    config = _config(tmp_path, source=str(source), revoke_missing=True)
    first_seen = "2026-11-01T00:00:00.000Z"
    # State as the scheme-1 connector wrote it (its own canonical forms, no id_scheme field):
    # two live entries, one whose revocation was published already.
    old_state = {
        "entries": {
            "url|http://a.example/x/../y": {
                "first_seen": first_seen, "generation": 1, "published": True,
            },
            "url|http://b.example/": {
                "first_seen": first_seen, "generation": 1, "published": True,
            },
            "domain-name|gone.example": {
                "first_seen": first_seen, "generation": 1, "published": True,
                "revoke_at": "2026-11-02T00:00:00.000Z", "revoked": True,
            },
        }
    }  # fmt: skip
    StateFile(config.state_path(Settings())).save(old_state)

    report, sent = _run(config)
    revoked = {o["id"]: o for o in sent if o.get("revoked")}
    live = {o["id"]: o for o in sent if not o.get("revoked")}
    old_ids = {
        indicator_id("messy", "url", "http://a.example/x/../y", scheme=1),
        indicator_id("messy", "url", "http://b.example/", scheme=1),
    }
    assert set(revoked) == old_ids  # every live old id revoked, the revoked one left alone
    for obj in revoked.values():
        assert obj["created"] == first_seen and obj["modified"] > first_seen
    assert set(live) == {
        indicator_id("messy", "url", "http://a.example/y", id_key=KEY()),
        indicator_id("messy", "url", "http://b.example/", id_key=KEY()),
        indicator_id("messy", "domain-name", "c.example", id_key=KEY()),
    }
    assert not set(live) & old_ids
    carried = live[indicator_id("messy", "url", "http://a.example/y", id_key=KEY())]
    assert carried["created"] == first_seen  # first seen kept across the scheme change
    assert report.revoked == 2 and not report.rejections

    state = StateFile(config.state_path(Settings())).load()
    assert state["id_scheme"] == ID_SCHEME and state["retired"] == {}
    again, resent = _run(config)  # the next run: nothing new, nothing revoked again
    assert resent == [] and again.revoked == 0 and again.unchanged == 3
