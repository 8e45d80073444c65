"""RPZ zone transfers (egress/sinks/dns.py) with dnspython's own client, played as the
attacker too: no TSIG, a forged key, another subscriber's valid key, a zone that is not ours.
No broker: the server runs on a loopback port in the test's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.xfr
import dns.zone
import pytest

from egress.sinks.dns import ServedZone, ZoneServer, make_key
from egress.sinks.subscriber import Safety, SubscriberSink
from schemas.sinks import SubscriberSinks
from tests.helpers.stix_samples import numbered_domain_indicator

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SECRETS = {"isp-one": b"1" * 32, "isp-two": b"2" * 32}


@dataclass
class Served:
    port: int
    sinks: dict[str, SubscriberSink]
    keys: dict[str, dns.tsig.Key]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    sinks = {
        org: SubscriberSink(SubscriberSinks(org=org), tmp_path, Safety(enabled=False))
        for org in SECRETS
    }
    for n in range(3):
        sinks["isp-one"].current.apply(numbered_domain_indicator(f"d{n}.example", n))
    sinks["isp-two"].current.apply(numbered_domain_indicator("two.example", 9))
    for sink in sinks.values():
        sink.publish(NOW)
    keys = {org: make_key(s.config, SECRETS[org]) for org, s in sinks.items()}
    zones = [ServedZone(s.config, keys[org], s.published_zone) for org, s in sinks.items()]
    loop = asyncio.new_event_loop()
    server = ZoneServer(zones)
    port = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield Served(port, sinks, keys)
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def axfr(port: int, zone: str, key: dns.tsig.Key | None) -> dns.zone.Zone:
    query = dns.message.make_query(zone, "AXFR")
    if key is not None:
        query.use_tsig({key.name: key}, keyname=key.name)
    target = dns.zone.Zone(zone)
    dns.query.inbound_xfr("127.0.0.1", target, query=query, port=port, timeout=5)
    return target


def names(zone: dns.zone.Zone) -> set[str]:
    return {str(name) for name in zone.nodes} - {"@"}


def test_signed_axfr_gives_the_zone(served: Served) -> None:
    zone = axfr(served.port, "isp-one.rpz.stixbus.", served.keys["isp-one"])
    assert names(zone) == {f"{p}d{n}.example" for n in range(3) for p in ("", "*.")}
    soa = zone.get_soa()
    assert served.sinks["isp-one"].zone is not None
    assert soa.serial == served.sinks["isp-one"].zone.serial


def test_large_zone_is_sent_in_many_signed_messages(tmp_path: Path, served: Served) -> None:
    sink = served.sinks["isp-one"]
    for n in range(3, 2500):
        sink.current.apply(numbered_domain_indicator(f"d{n}.example", n))
    sink.publish(NOW + timedelta(seconds=1))
    zone = axfr(served.port, "isp-one.rpz.stixbus.", served.keys["isp-one"])
    assert len(names(zone)) == 2 * 2500  # > 12 messages, each TSIG-signed in sequence


def test_unsigned_transfer_is_refused(served: Served) -> None:
    with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
        axfr(served.port, "isp-one.rpz.stixbus.", None)


def test_forged_key_is_refused(served: Served) -> None:
    forged = dns.tsig.Key("isp-one-rpz.", b"guessed-secret-guessed-secret-00", "hmac-sha256")
    with pytest.raises(dns.exception.DNSException):
        axfr(served.port, "isp-one.rpz.stixbus.", forged)


def test_another_subscribers_valid_key_is_refused(served: Served) -> None:
    # isp-two holds a real key, for its own zone: it must not read isp-one's.
    with pytest.raises(dns.exception.DNSException, match="REFUSED"):
        axfr(served.port, "isp-one.rpz.stixbus.", served.keys["isp-two"])
    assert names(axfr(served.port, "isp-two.rpz.stixbus.", served.keys["isp-two"])) == {
        "two.example",
        "*.two.example",
    }


def test_unknown_zone_and_plain_queries_are_refused(served: Served) -> None:
    key = served.keys["isp-one"]
    for name, rdtype in (("example.com.", "AXFR"), ("isp-one.rpz.stixbus.", "A")):
        query = dns.message.make_query(name, rdtype)
        query.use_tsig({key.name: key}, keyname=key.name)
        response = dns.query.tcp(query, "127.0.0.1", port=served.port, timeout=5)
        assert response.rcode() == dns.rcode.REFUSED
    # Unsigned SOA over UDP from an address not in axfr_unsigned_from: refused too.
    response = dns.query.udp(
        dns.message.make_query("isp-one.rpz.stixbus.", "SOA"),
        "127.0.0.1",
        port=served.port,
        timeout=5,
    )
    assert response.rcode() == dns.rcode.REFUSED


def test_unsigned_from_an_allowed_address(tmp_path: Path) -> None:
    config = SubscriberSinks(org="isp-one", axfr_unsigned_from=["127.0.0.1/32"])
    sink = SubscriberSink(config, tmp_path, Safety(enabled=False))
    sink.current.apply(numbered_domain_indicator("x.example", 1))
    sink.publish(NOW)
    server = ZoneServer(
        [ServedZone(config, make_key(config, SECRETS["isp-one"]), sink.published_zone)]
    )
    query = dns.message.make_query("isp-one.rpz.stixbus.", "AXFR")
    wire = b"".join(server.answer(query.to_wire(), "127.0.0.1", tcp=True))
    assert b"\x01x\x07example" in wire
    refused = list(server.answer(query.to_wire(), "192.0.2.1", tcp=True))
    assert dns.message.from_wire(refused[0]).rcode() == dns.rcode.REFUSED


def test_ixfr_sends_only_the_changes(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    key = served.keys["isp-one"]
    sink = served.sinks["isp-one"]
    zone = axfr(served.port, "isp-one.rpz.stixbus.", key)
    old_serial = zone.get_soa().serial
    sink.current.apply(
        numbered_domain_indicator("d0.example", 0, modified="2026-11-02T00:00:00Z", revoked=True)
    )
    sink.current.apply(numbered_domain_indicator("new.example", 77))
    sink.publish(NOW + timedelta(seconds=5))
    query, _ = dns.xfr.make_query(zone, serial=old_serial)
    query.use_tsig({key.name: key}, keyname=key.name)
    messages = []
    original = dns.message.from_wire

    def spy(*args: object, **kwargs: object) -> dns.message.Message:
        message = original(*args, **kwargs)  # type: ignore[arg-type]
        messages.append(message)
        return message

    monkeypatch.setattr(dns.message, "from_wire", spy)
    dns.query.inbound_xfr("127.0.0.1", zone, query=query, port=served.port, timeout=5)
    monkeypatch.undo()
    assert names(zone) == {f"{p}{n}.example" for n in ("d1", "d2", "new") for p in ("", "*.")}
    sent = sum(len(m.answer) for m in messages)
    assert sent == 2 + 2 + 2 + 2  # SOA new, SOA old, 2 deleted, SOA new, 2 added, SOA new


def test_tsig_secret_is_generated_private_and_checked(tmp_path: Path) -> None:
    from egress.sinks.dns import tsig_secret
    from stixbus.errors import ConfigError

    config = SubscriberSinks(org="isp-one")
    secret = tsig_secret(config, tmp_path)
    path = tmp_path / "secrets" / "tsig" / "isp-one.key"
    assert len(secret) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert tsig_secret(config, tmp_path) == secret  # stable across restarts
    short = tmp_path / "short.key"
    short.write_text("c2hvcnQ=\n")  # "short"
    with pytest.raises(ConfigError, match="at least 16"):
        tsig_secret(SubscriberSinks(org="isp-one", tsig_secret_file=short), tmp_path)
    with pytest.raises(ConfigError, match="cannot be read"):
        tsig_secret(SubscriberSinks(org="isp-one", tsig_secret_file=tmp_path / "nope"), tmp_path)
