"""Pure parts of the connectors: parsing, id determinism, tag → TLP, state, batching, retries."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import (
    ConnectorError,
    Report,
    RetryPolicy,
    SourceAuthError,
    SourceUnavailable,
    StateFile,
    Submitter,
    http_get,
    load_config,
)
from connectors.blocklist import (
    BlocklistConfig,
    IndicatorType,
    indicator_id,
    make_indicator,
    parse_lines,
    parse_value,
    pattern_for,
)
from connectors.misp import MispConfig, convert_event, tlp_of_tags
from schemas.tlp import TLP
from stixbus.core.canonical import CanonicalError
from stixbus.kafka.client import Published
from stixbus.settings import Settings
from tests.helpers.http import Answer, scripted_server
from tests.helpers.paths import FIXTURES, REPO_ROOT, example_registry


def bl(**kw: Any) -> BlocklistConfig:
    return BlocklistConfig.model_validate({"name": "t", "org": "cert", "source": "x", **kw})


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        ("HTTPS://Pay-Check.Example:443/Login?x=1", "url", "https://pay-check.example/Login?x=1"),
        ("http://EXAMPLE.com", "url", "http://example.com/"),
        ("http://198.51.100.14:8080/bins", "url", "http://198.51.100.14:8080/bins"),
        ("Evil.Example.", "domain-name", "evil.example"),
        ("bücher.example", "domain-name", "xn--bcher-kva.example"),
        ("203.0.113.0/24", "ipv4-addr", "203.0.113.0/24"),
        ("hxxp://evil[.]example/x", "url", "http://evil.example/x"),
        ("evil[.]example", "domain-name", "evil.example"),
        ("192.0.2.1/32", "ipv4-addr", "192.0.2.1"),
        ("2001:DB8:0::7", "ipv6-addr", "2001:db8::7"),
        ("44D88612FEA8A8F36DE82E1296C71CC1", "md5", "44d88612fea8a8f36de82e1296c71cc1"),
        ("a" * 64, "sha256", "a" * 64),
    ],
)
def test_auto_detects_and_canonicalises(raw: str, kind: str, expected: str) -> None:
    assert parse_value(raw, IndicatorType.AUTO) == (kind, expected)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("javascript:alert(1)", IndicatorType.URL),
        ("999.1.1.1", IndicatorType.IP),
        ("abc", IndicatorType.MD5),
        ("a" * 64, IndicatorType.MD5),
        ("-bad-.example", IndicatorType.DOMAIN),
        ("not a thing", IndicatorType.AUTO),
    ],
)
def test_bad_values_are_rejected(raw: str, kind: IndicatorType) -> None:
    with pytest.raises(CanonicalError):
        parse_value(raw, kind)


def test_urlhaus_preset_reports_bad_lines_with_numbers() -> None:
    config = bl(preset="urlhaus")
    report = Report("blocklist", "t", "cert")
    entries = list(parse_lines((FIXTURES / "blocklists/urlhaus.csv").read_text(), config, report))
    assert [e.value for e in entries] == [
        "http://login-alphabank.example/secure/update.php",
        "http://198.51.100.14:8080/bins/mips",
        "https://pay-check.example/Login?x=1",
        "http://cdn-update.example/flash.exe",
    ]
    assert entries[0].first_seen == "2026-11-20T09:41:06.000Z"
    assert [r.pointer for r in report.rejections] == ["/line/11", "/line/12"]
    assert "not an ISO 8601 time" in report.rejections[0].message
    assert "line 12" in report.rejections[1].message


def test_ip_list_preset() -> None:
    config = bl(preset="ip-list")
    report = Report("blocklist", "t", "cert")
    entries = list(parse_lines((FIXTURES / "blocklists/ips.txt").read_text(), config, report))
    assert [e.value for e in entries] == [
        "198.51.100.23",
        "203.0.113.0/24",
        "2001:db8::7",
        "192.0.2.1",
    ]
    assert [r.pointer for r in report.rejections] == ["/line/6", "/line/7"]


def test_ids_are_deterministic_and_source_scoped() -> None:
    key = bytes(range(32))
    a = indicator_id("src", "url", "http://x.example/", id_key=key)
    assert a == indicator_id("src", "url", "http://x.example/", id_key=key)
    assert a != indicator_id("other", "url", "http://x.example/", id_key=key)
    assert a != indicator_id("src", "url", "http://x.example/", generation=2, id_key=key)
    config = bl(tlp="green", confidence=80, valid_for_days=30, labels=["phishing"])
    one = make_indicator(config, "url", "http://x.example/", "2026-11-20T09:41:06.000Z", id_key=key)
    two = make_indicator(config, "url", "http://x.example/", "2026-11-20T09:41:06.000Z", id_key=key)
    assert one == two
    assert one["valid_until"] == "2026-12-20T09:41:06.000Z"
    assert one["object_marking_refs"] == [TLP.GREEN.marking_id]
    revoked = make_indicator(
        config,
        "url",
        "http://x.example/",
        one["created"],
        1,
        "2026-11-21T00:00:00.000Z",
        id_key=key,
    )
    assert revoked["id"] == one["id"] and revoked["revoked"] is True
    assert revoked["created"] == one["created"] and revoked["modified"] > one["modified"]


def test_connector_ids_cannot_be_predicted_without_the_bus_secret() -> None:
    """Scheme 3 (issue 12, finding 1): another member knows the source name, the value and the
    public connector namespace, and tries every unkeyed scheme; none gives the CERT's id, so it
    cannot publish the id first and own it."""
    import uuid as uuid_module

    from connectors.base import CONNECTOR_NAMESPACE

    cert_key = bytes(range(32))
    real = indicator_id("urlhaus", "url", "http://x.example/", id_key=cert_key)
    guesses = {
        f"indicator--{uuid_module.uuid5(CONNECTOR_NAMESPACE, name)}"
        for name in (
            "blocklist:urlhaus:url:http://x.example/",
            "blocklist/v2:urlhaus:url:http://x.example/",
            "blocklist/v3:urlhaus:url:http://x.example/",
        )
    }
    assert real not in guesses
    assert real != indicator_id("urlhaus", "url", "http://x.example/", id_key=bytes(32))
    with pytest.raises(ValueError, match="connector id key"):
        indicator_id("urlhaus", "url", "http://x.example/")


def test_patterns_validate_with_the_oasis_validator() -> None:
    from stix2patterns.validator import run_validator

    for kind, value in [
        ("url", "http://x.example/a'b\\c"),
        ("domain-name", "x.example"),
        ("ipv4-addr", "203.0.113.0/24"),
        ("ipv6-addr", "2001:db8::7"),
        ("md5", "44d88612fea8a8f36de82e1296c71cc1"),
        ("sha1", "a" * 40),
        ("sha256", "b" * 64),
    ]:
        assert run_validator(pattern_for(kind, value), stix_version="2.1") == [], (kind, value)


def test_tag_to_tlp() -> None:
    assert tlp_of_tags(["phishing"]) is None
    assert tlp_of_tags(["tlp:green"]) is TLP.GREEN
    assert tlp_of_tags(["TLP:AMBER+STRICT", "tlp:green"]) is TLP.AMBER_STRICT
    assert tlp_of_tags(["tlp:white"]) is TLP.CLEAR
    assert tlp_of_tags(["tlp:clear", "tlp:red"]) is TLP.RED
    with pytest.raises(ValueError, match="unknown TLP"):
        tlp_of_tags(["tlp:ex:chr"])


def test_misp_event_markings_and_labels() -> None:
    config = MispConfig(name="m", org="cert", source="x", labels=["cert-feed"], confidence=80)
    event = json.loads(
        (FIXTURES / "misp_feed/6c3a9e10-0000-4000-8000-000000000002.json").read_text()
    )
    objects = convert_event(event, config)
    indicators = {o["pattern"]: o for o in objects if o["type"] == "indicator"}
    assert len(indicators) == 3
    for ind in indicators.values():
        assert "phishing" in ind["labels"] and "cert-feed" in ind["labels"]
        assert ind["confidence"] == 80
    sha = next(o for p, o in indicators.items() if "SHA256" in p or "SHA-256" in p)
    assert sha["object_marking_refs"] == [TLP.AMBER.marking_id]  # attribute tag beats event
    md5 = next(o for p, o in indicators.items() if "MD5" in p)
    assert md5["object_marking_refs"] == [TLP.GREEN.marking_id]
    assert not any(o["type"] == "marking-definition" for o in objects)


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "s" / "state.json")
    assert store.load() == {}
    store.save({"cursors": {"u": "2026-01-01T00:00:00.000Z"}})
    assert StateFile(store.path).load()["cursors"]["u"] == "2026-01-01T00:00:00.000Z"
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temp left over
    store.path.write_text("{torn")
    with pytest.raises(ConnectorError, match="not valid JSON"):
        store.load()


def test_submitter_splits_by_bytes_and_commits_after_ack() -> None:
    settings = Settings()
    org = example_registry().get("cert")
    sent: list[bytes] = []
    committed: list[int] = []

    async def fake_publish(
        conn: dict[str, Any], topic: str, payload: bytes, sid: str | None
    ) -> Published:
        assert len(payload) <= 20_000
        assert orjson.loads(payload)["type"] == "bundle"
        sent.append(payload)
        assert sid is not None
        return Published(sid, topic, 0, len(sent))

    async def go() -> Report:
        report = Report("t", "t", "cert")
        sub = Submitter(settings, org, "t", report, max_bytes=20_000, publish_fn=fake_publish)
        for unit in range(50):
            objs = [{"id": f"x--{unit}-{i}", "pad": "y" * 100} for i in range(10)]
            await sub.add(objs, functools.partial(committed.append, unit))
        await sub.flush()
        return report

    report = asyncio.run(go())
    assert committed == list(range(50))
    assert report.published_objects == 500
    assert len(sent) > 1 and len(report.submissions) == len(sent)
    ids = [o["id"] for p in sent for o in orjson.loads(p)["objects"]]
    assert len(ids) == len(set(ids)) == 500


def test_retries_429_and_5xx_then_succeeds() -> None:
    script: list[Answer] = [(429, {"Retry-After": "0"}, b""), (503, {}, b""), (502, {}, b"")]
    with scripted_server(script) as server:
        url = server.url + "/list.txt"
        assert http_get(url, policy=RetryPolicy(5, 0.05)) == b"ok"
    assert len(server.hits) == 4
    # urllib3's backoff: the first retry at once (Retry-After 0), then 0.05·2, 0.05·4 s
    gaps = [b - a for a, b in itertools.pairwise(server.hits)]
    assert gaps[2] >= 0.18 and gaps[1] >= 0.09


def test_retry_after_is_honoured_but_capped() -> None:
    with scripted_server([(503, {"Retry-After": "3600"}, b"")]) as server:
        url = server.url + "/"
        started = time.monotonic()
        assert http_get(url, policy=RetryPolicy(3, 0.01, max_delay=0.3)) == b"ok"
    assert 0.25 <= time.monotonic() - started < 5


def test_auth_errors_fail_at_once_and_outages_give_up() -> None:
    with scripted_server([(401, {}, b""), (200, {}, b"")]) as server:
        url = server.url + "/"
        with pytest.raises(SourceAuthError, match="401"):
            http_get(url, policy=RetryPolicy(5, 0.01))
        assert len(server.hits) == 1
    with scripted_server([(500, {}, b"")] * 10) as server:
        url = server.url + "/"
        with pytest.raises(SourceUnavailable, match=r"after 3 attempts \(HTTP 500\)"):
            http_get(url, policy=RetryPolicy(3, 0.01))
        assert len(server.hits) == 3
    with scripted_server([(404, {}, b"")]) as server:
        url = server.url + "/"
        with pytest.raises(SourceUnavailable, match="404 is not retryable"):
            http_get(url, policy=RetryPolicy(3, 0.01))
        assert len(server.hits) == 1
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceUnavailable, match="after 3 attempts"):
        http_get(f"http://127.0.0.1:{port}/", policy=RetryPolicy(3, 0.01))


def test_example_configs_validate() -> None:
    from connectors.runner import KINDS

    examples = sorted((REPO_ROOT / "deploy/connectors").glob("*.yaml"))
    assert examples
    for path in examples:
        kind = path.stem.split("-")[0]
        load_config(path, KINDS[kind].config, kind)


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\norg: cert\nsource: a\ntlp: purple\n")
    with pytest.raises(ConnectorError, match=r"c\.yaml.*tlp"):
        load_config(path, BlocklistConfig, "blocklist")


def test_submissions_stay_under_the_configured_record_limit() -> None:
    org = example_registry().get("cert")
    settings = Settings(max_record_bytes=50_000)
    report = Report("t", "t", "cert")
    assert Submitter(settings, org, "t", report, max_bytes=10**9).max_bytes == 50_000
    roomy = Settings(max_record_bytes=10**9)
    assert Submitter(roomy, org, "t", report).max_bytes == 1_000_000  # the config default
