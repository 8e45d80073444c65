"""The false-positive guard and decay on the real broker (issue 16, points 3-5).

One worker for the module: URL indicators without valid_until decay after a few seconds
(STIXBUS_DECAY_URL_SECONDS), the expiry scan runs every second.  Every test uses fresh values.
"""

from __future__ import annotations

import random
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from stixbus.cli.main import cli
from stixbus.metrics import parse_metrics
from tests.helpers.bus import AGREEMENTS, Bus, make_bus
from tests.helpers.dedup_samples import indicator

Obj = dict[str, Any]
URL_LIFETIME = 6  # seconds
# Who the example agreements give a CERT phishing indicator (tests/unit/test_route_step.py).
CERT_RECIPIENTS = {
    "bank-a", "bank-b", "bank-c", "isp-one", "isp-two", "central-bank", "prosecution", "fiu",
}  # fmt: skip


@pytest.fixture(scope="module")
def gbus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    handle = make_bus(
        bootstrap,
        tmp_path_factory.mktemp("guard"),
        STIXBUS_EXPIRY_SCAN_SECONDS="1",
        STIXBUS_DECAY_URL_SECONDS=str(URL_LIFETIME),
    )
    handle.start()
    yield handle
    handle.stop()


def indicators(bus: Bus, subscriber: str) -> list[Obj]:
    return [o for o in bus.objects(bus.names.deliver(subscriber)) if o.get("type") == "indicator"]


def wait(check: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def fresh_ip() -> str:
    return f"11.203.{random.randrange(256)}.{random.randrange(1, 255)}"  # on no list


def test_listed_values_never_reach_the_isp_blocking_agreement(gbus: Bus) -> None:
    token = uuid.uuid4().hex[:8]
    guarded = {
        "[ipv4-addr:value = '8.8.8.8']": "public-dns-v4",
        "[domain-name:value = 'google.com']": "tranco10k",
        "[ipv4-addr:value = '198.51.100.0/24']": "rfc5735",
        f"[domain-name:value = 'login-{token}.alphabank.example']": "member-bank-a",
    }
    control = f"[ipv4-addr:value = '{fresh_ip()}']"
    objects = [indicator(p) for p in (*guarded, control)]
    ids = {o["pattern"]: o["id"] for o in objects}
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    submission = gbus.publish("cert", bundle)

    # The receipt warns the CERT about each listed value.
    def receipt() -> Obj | None:
        for r in gbus.objects(gbus.names.receipts("cert")):
            if r["submission_id"] == submission:
                return r
        return None

    got = wait(receipt, "the CERT's receipt")
    assert got["accepted"] == 5
    for pattern, name in guarded.items():
        assert any(ids[pattern] in w and name in w for w in got["warnings"]), (name, got)
    assert not any(ids[control] in w for w in got["warnings"])

    # The prosecution agreement opts out of the maintained lists: it receives the three
    # maintained-list hits (so their routing step has run), never the member's own domain.
    opted = {p for p, n in guarded.items() if not n.startswith("member-")}
    wait(
        lambda: opted <= {o["pattern"] for o in indicators(gbus, "prosecution")},
        "the prosecution office's opt-out deliveries",
    )
    wait(lambda: control in {o["pattern"] for o in indicators(gbus, "isp-one")}, "the control")

    # Every decision about a listed value for the ISPs is a warninglist denial in the audit.
    def audited() -> list[Obj]:
        entries = [
            a
            for a in gbus.decisions()
            if a["object_id"] in set(ids.values()) and a["subscriber"] in ("isp-one", "isp-two")
        ]
        return entries if len(entries) >= 10 else []

    entries = wait(audited, "the audit records")
    for pattern, name in guarded.items():
        for isp in ("isp-one", "isp-two"):
            [entry] = [
                e for e in entries if e["object_id"] == ids[pattern] and e["subscriber"] == isp
            ]
            assert not entry["allow"] and not entry["delivered"]
            assert f"warninglist:{name}" in {r["code"] for r in entry["reasons"]}
    for isp in ("isp-one", "isp-two"):
        delivered = {o["pattern"] for o in indicators(gbus, isp)}
        assert not delivered & set(guarded), (isp, delivered & set(guarded))
    member = next(p for p, n in guarded.items() if n.startswith("member-"))
    for org in CERT_RECIPIENTS:
        assert member not in {o["pattern"] for o in indicators(gbus, org)}, org

    # Guard hits per list on /metrics.
    with urllib.request.urlopen(gbus.web + "/metrics", timeout=5) as resp:
        snapshot = parse_metrics(resp.read().decode())
    hits = snapshot.by("stixbus_guard_hits_total", "list")
    assert hits.get("public-dns-v4", 0) >= 1 and hits.get("member-bank-a", 0) >= 1, hits


def test_explain_names_the_list(gbus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_bytes(orjson.dumps(indicator("[ipv4-addr:value = '8.8.8.8']")))
    args = ["explain", "--object", str(path), "--to", "isp-one", "--agreements", str(AGREEMENTS)]
    result = CliRunner().invoke(cli, args, env=gbus.env)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "DENY" in text and "warninglist:public-dns-v4" in text and "'8.8.8.8'" in text
    path.write_bytes(orjson.dumps(indicator(f"[ipv4-addr:value = '{fresh_ip()}']")))
    allowed = CliRunner().invoke(cli, args, env=gbus.env)
    text = " ".join(allowed.output.split())
    assert "ALLOW" in text and "expires for isp-one: at" in text and "30 days" in text


def test_an_indicator_without_valid_until_is_revoked_at_every_recipient(gbus: Bus) -> None:
    pattern = f"[url:value = 'http://pay-{uuid.uuid4().hex[:10]}.example/login']"
    gbus.publish("cert", indicator(pattern))

    def versions(org: str) -> list[Obj]:
        return [o for o in indicators(gbus, org) if o["pattern"] == pattern]

    def everyone(done: Callable[[list[Obj]], bool]) -> Callable[[], bool]:
        return lambda: all(done(versions(org)) for org in CERT_RECIPIENTS)

    wait(
        everyone(lambda vs: any(v.get("revoked") for v in vs)),
        "the revocations at every recipient",
        timeout=URL_LIFETIME + 40,
    )
    for org in CERT_RECIPIENTS:
        first, revoked = versions(org)
        assert "valid_until" in first and not first.get("revoked"), (org, first)
        assert revoked["id"] == first["id"] and revoked["revoked"] is True
        assert revoked["modified"] > first["modified"]
    with urllib.request.urlopen(gbus.web + "/metrics", timeout=5) as resp:
        snapshot = parse_metrics(resp.read().decode())
    assert snapshot.by("stixbus_decayed_total", "cause").get("valid_until", 0) >= 8
