"""The network sinks against the real programs (issue 15): a real Unbound resolver (Debian
package, installed by deploy/test.sh) loads the ISP's RPZ zone from the bus by zone transfer,
blocks a CERT-published domain and URL host within seconds and unblocks them on revocation;
the lists and the MISP feed are pulled over HTTPS with the TAXII credentials.

Unbound 1.17 (Debian 12) cannot sign zone transfers with TSIG, so its zone is configured with
`axfr_unsigned_from: [127.0.0.1/32]`; TSIG itself is checked with dnspython's client in
tests/unit/test_sinks_dns.py (the attacker cases: no key, a wrong key, another org's key).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import orjson
import pytest
import yaml

from egress.credentials import add_credential, default_path
from schemas.tlp import TLP
from tests.helpers.bus import Bus, free_port, make_bus
from tests.helpers.paths import REPO_ROOT

LOCAL_ZONE = "example.test."
LOCAL_ADDRESS = "192.0.2.10"


@dataclass
class Stack:
    bus: Bus
    sinks: subprocess.Popen[bytes]
    unbound: subprocess.Popen[bytes]
    unbound_port: int
    http_port: int
    dns_port: int
    cafile: Path
    passwords: dict[str, str]
    home: Path

    def sinks_log(self) -> str:
        path = self.home / "sinks.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{what} not listening on {port} after {timeout}s")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "sinks.pem", folder / "sinks.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _unbound_conf(folder: Path, port: int, dns_port: int) -> Path:
    zonefile = folder / "example.test.zone"
    zonefile.write_text(
        f"$ORIGIN {LOCAL_ZONE}\n$TTL 1\n"
        "@ IN SOA localhost. hostmaster.localhost. 1 60 60 600 1\n"
        "@ IN NS localhost.\n"
        f"* IN A {LOCAL_ADDRESS}\n"
    )
    conf = folder / "unbound.conf"
    conf.write_text(
        f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 1
    username: ""
    chroot: ""
    directory: "{folder}"
    pidfile: "{folder}/unbound.pid"
    module-config: "respip iterator"
    access-control: 127.0.0.0/8 allow
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
    local-zone: "test." nodefault  # RFC 6761 names are NXDOMAIN by default in Unbound
remote-control:
    control-enable: no
auth-zone:
    name: "{LOCAL_ZONE}"
    zonefile: "{zonefile}"
    for-downstream: yes
    for-upstream: yes
rpz:
    name: "isp-one.rpz.stixbus."
    primary: 127.0.0.1@{dns_port}
    allow-notify: 127.0.0.1
    rpz-log: yes
"""
    )
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return conf


@pytest.fixture(scope="module")
def stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    unbound = shutil.which("unbound") or "/usr/sbin/unbound"
    assert Path(unbound).exists(), "unbound is missing: deploy/test.sh installs the Debian package"
    home = tmp_path_factory.mktemp("sinks")
    bus = make_bus(bootstrap, home)
    bus.start()
    unbound_port, dns_port, http_port = free_port(), free_port(), free_port()
    sinks_yaml = home / "sinks.yaml"
    sinks_yaml.write_text(
        yaml.safe_dump(
            {
                "subscribers": [
                    {
                        "org": "isp-one",
                        "axfr_unsigned_from": ["127.0.0.1/32"],
                        "notify": [f"127.0.0.1:{unbound_port}"],
                    }
                ]
            }
        )
    )
    cred_file = default_path(home)
    passwords = {org: add_credential(cred_file, org)[1] for org in ("isp-one", "isp-two")}
    cert, key = _self_signed(home)
    env = {
        **bus.env,
        "STIXBUS_SINKS_CONFIG": str(sinks_yaml),
        "STIXBUS_SINKS_ORGS": "isp-one,isp-two",
        "STIXBUS_SINKS_HTTP_PORT": str(http_port),
        "STIXBUS_SINKS_DNS_PORT": str(dns_port),
        "STIXBUS_SINKS_DEBOUNCE_SECONDS": "0.1",
        "STIXBUS_SINKS_TLS_CERT": str(cert),
        "STIXBUS_SINKS_TLS_KEY": str(key),
    }
    log = (home / "sinks.log").open("ab")
    sinks = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", "sinks", "serve"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
    )  # fmt: skip
    resolver: subprocess.Popen[bytes] | None = None
    try:
        _wait_port(http_port, sinks, "stixbus sinks serve")
        # The zone exists once the sink has read the (empty) topic: SOA answers NOERROR.
        _until(lambda: _rcode(dns_port, "isp-one.rpz.stixbus.", "SOA") == dns.rcode.NOERROR, 60)
        conf = _unbound_conf(home, unbound_port, dns_port)
        ulog = (home / "unbound.log").open("ab")
        resolver = subprocess.Popen(
            [unbound, "-d", "-c", str(conf)], stdout=ulog, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _until(lambda: _address(unbound_port, f"warmup.{LOCAL_ZONE}") == LOCAL_ADDRESS, 30)
        yield Stack(
            bus, sinks, resolver, unbound_port, http_port, dns_port, cert, passwords, home
        )
    finally:
        for proc in (resolver, sinks):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        bus.stop()


def _query(port: int, name: str, rdtype: str) -> dns.message.Message | None:
    try:
        query = dns.message.make_query(name, rdtype)
        return dns.query.udp(query, "127.0.0.1", timeout=1, port=port)
    except (dns.exception.Timeout, OSError):
        return None


def _rcode(port: int, name: str, rdtype: str) -> int | None:
    answer = _query(port, name, rdtype)
    return None if answer is None else answer.rcode()


def _address(port: int, name: str) -> str | None:
    """The A record the resolver answers, 'NXDOMAIN', or None (no answer yet)."""
    answer = _query(port, name, "A")
    if answer is None:
        return None
    if answer.rcode() == dns.rcode.NXDOMAIN:
        return "NXDOMAIN"
    for rrset in answer.answer:
        if rrset.rdtype == dns.rdatatype.A:
            return str(rrset[0])
    return None


def _until(check: Any, timeout: float, step: float = 0.1) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"not true after {timeout}s")


def _indicator(pattern: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-01T08:00:00.000Z",
        "modified": "2026-11-01T08:00:00.000Z",
        "name": "Phishing infrastructure",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00.000Z",
        "indicator_types": ["malicious-activity"],
        "labels": ["phishing"],
        "confidence": 90,
        "object_marking_refs": [TLP.GREEN.marking_id],
        **props,
    }


def _revoked(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "modified": "2026-11-02T08:00:00.000Z", "revoked": True}


def test_unbound_blocks_a_published_domain_and_unblocks_it_on_revocation(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    blocked, phish = f"blocked-{tag}.{LOCAL_ZONE}", f"phish-{tag}.{LOCAL_ZONE}"
    unlisted = f"fine-{tag}.{LOCAL_ZONE}"
    domain = _indicator(f"[domain-name:value = '{blocked.rstrip('.')}']")
    url = _indicator(f"[url:value = 'http://{phish.rstrip('.')}/login']")
    assert _address(stack.unbound_port, blocked) == LOCAL_ADDRESS  # resolves before publication

    published = time.monotonic()
    stack.bus.publish("cert", {"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                               "objects": [domain, url]})  # fmt: skip
    try:
        _until(lambda: _address(stack.unbound_port, blocked) == "NXDOMAIN", 30)
    except AssertionError:
        raise AssertionError(f"never blocked; sinks log:\n{stack.sinks_log()}") from None
    block_seconds = time.monotonic() - published
    assert _address(stack.unbound_port, f"www.{blocked}") == "NXDOMAIN"  # and names under it
    _until(lambda: _address(stack.unbound_port, phish) == "NXDOMAIN", 30)  # the URL's host
    assert _address(stack.unbound_port, unlisted) == LOCAL_ADDRESS  # unlisted names resolve

    revoked_at = time.monotonic()
    stack.bus.publish("cert", _revoked(domain))
    _until(lambda: _address(stack.unbound_port, blocked) == LOCAL_ADDRESS, 30)
    unblock_seconds = time.monotonic() - revoked_at
    assert _address(stack.unbound_port, phish) == "NXDOMAIN"  # the other one stays blocked
    print(
        f"\nunbound RPZ: blocked {block_seconds:.2f}s after publish, "
        f"unblocked {unblock_seconds:.2f}s after revocation"
    )
    assert block_seconds < 15 and unblock_seconds < 15


def _get(
    stack: Stack, path: str, org: str | None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"https://127.0.0.1:{stack.http_port}{path}")
    if org is not None:
        token = base64.b64encode(f"{org}:{stack.passwords[org]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    context = ssl.create_default_context(cafile=str(stack.cafile))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_lists_over_https_own_org_only_with_etags(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    ips = [f"11.203.100.{i}" for i in range(0, 4)]  # .0-.3 aggregate to one /30
    objects = [_indicator(f"[ipv4-addr:value = '{ip}']") for ip in ips]
    objects.append(_indicator(f"[domain-name:value = 'list-{tag}.example.test']"))
    stack.bus.publish("cert", {"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                               "objects": objects})  # fmt: skip

    def ipv4() -> bytes:
        status, body, _ = _get(stack, "/lists/isp-one/ipv4.txt", "isp-one")
        return body if status == 200 else b""

    _until(lambda: b"11.203.100.0/30" in ipv4(), 30, 0.3)
    status, body, headers = _get(stack, "/lists/isp-one/domains.txt", "isp-one")
    assert status == 200 and f"list-{tag}.example.test\n".encode() in body
    etag = headers["ETag"]
    status, body, _ = _get(stack, "/lists/isp-one/domains.txt", "isp-one", {"If-None-Match": etag})
    assert (status, body) == (304, b"")
    # Another org's list, with valid credentials of its own: 403.  No or wrong credentials: 401.
    assert _get(stack, "/lists/isp-one/domains.txt", "isp-two")[0] == 403
    assert _get(stack, "/lists/isp-one/domains.txt", None)[0] == 401
    stack.passwords["wrong"] = "not-the-password"
    request_as_wrong = _get(stack, "/lists/isp-one/domains.txt", "wrong")
    assert request_as_wrong[0] == 401
    # isp-two gets its own list (the same agreement delivers to it).
    _until(lambda: _get(stack, "/lists/isp-two/ipv4.txt", "isp-two")[1].count(b"/30") == 1, 30)


def test_misp_feed_reads_back_with_pymisp(stack: Stack) -> None:
    from pymisp import MISPEvent

    tag = uuid.uuid4().hex[:8]
    kept = _indicator(f"[domain-name:value = 'misp-{tag}.example.test']")
    gone = _indicator(f"[url:value = 'http://misp-{tag}.example.test/gone']")
    stack.bus.publish("cert", {"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                               "objects": [kept, gone]})  # fmt: skip

    def events() -> list[MISPEvent]:
        status, body, _ = _get(stack, "/misp/isp-one/manifest.json", "isp-one")
        if status != 200:
            return []
        loaded = []
        for event_uuid in orjson.loads(body):
            status, event_body, _ = _get(stack, f"/misp/isp-one/{event_uuid}.json", "isp-one")
            assert status == 200
            event = MISPEvent()
            event.load(event_body)
            loaded.append(event)
        return loaded

    def attributes() -> dict[str, Any]:
        return {a.value: a for e in events() for a in e.attributes}

    _until(lambda: f"http://misp-{tag}.example.test/gone" in attributes(), 30, 0.3)
    found = attributes()
    domain = found[f"misp-{tag}.example.test"]
    assert domain.type == "domain" and domain.to_ids and not domain.deleted
    assert {t.name for t in domain.tags} >= {"tlp:green", "phishing"}
    assert found[f"http://misp-{tag}.example.test/gone"].type == "url"
    stack.bus.publish("cert", _revoked(gone))
    _until(lambda: attributes()[f"http://misp-{tag}.example.test/gone"].deleted, 30, 0.3)
    assert not attributes()[f"misp-{tag}.example.test"].deleted


def test_export_writes_the_same_zone_once(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    stack.bus.publish("cert", _indicator(f"[domain-name:value = 'export-{tag}.example.test']"))
    _until(lambda: _address(stack.unbound_port, f"export-{tag}.{LOCAL_ZONE}") == "NXDOMAIN", 30)
    out = tmp_path / "isp-one.rpz"
    result = stack.bus.cli("export", "isp-one", "--format", "rpz", "--out", str(out))
    assert result.returncode == 0, result.stderr.decode()
    text = out.read_text()
    assert f"export-{tag}.example.test IN CNAME .\n" in text
    assert "$ORIGIN isp-one.rpz.stixbus." in text
    result = stack.bus.cli("export", "isp-one", "--format", "zeek")
    assert result.returncode == 0, result.stderr.decode()
    row = f"export-{tag}.example.test\tIntel::DOMAIN\tstixbus:indicator--"
    assert row.encode() in result.stdout


def test_expiry_removes_the_entry_within_seconds(stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    now = datetime.now(UTC)
    valid_until = now + timedelta(seconds=6)
    name = f"expiring-{uuid.uuid4().hex[:8]}.example.test"
    stack.bus.publish(
        "cert",
        _indicator(
            f"[domain-name:value = '{name}']",
            created=stamp(now - timedelta(minutes=1)),
            modified=stamp(now - timedelta(minutes=1)),
            valid_from=stamp(now - timedelta(minutes=1)),
            valid_until=stamp(valid_until),
        ),
    )

    def listed() -> bool:
        status, body, _ = _get(stack, "/lists/isp-one/domains.txt", "isp-one")
        return status == 200 and f"{name}\n".encode() in body

    _until(listed, 30, 0.2)
    _until(lambda: _address(stack.unbound_port, name + ".") == "NXDOMAIN", 10)
    _until(lambda: not listed(), 30, 0.2)
    late = (datetime.now(UTC) - valid_until).total_seconds()
    _until(lambda: _address(stack.unbound_port, name + ".") == LOCAL_ADDRESS, 10)
    resolved = (datetime.now(UTC) - valid_until).total_seconds()
    print(f"\nexpiry: gone from domains.txt {late:.2f}s, resolves {resolved:.2f}s after expiry")
    assert late < 5 and resolved < 8
