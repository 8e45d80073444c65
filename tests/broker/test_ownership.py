"""Object ownership on the real broker, played as the attacker (issue 12, finding 1).

Bank-a learns the CERT's source id and `modified` from its own attributed delivery and re-uses
them with the plain CLI.  Before the ownership stage, its revoked copy revoked the CERT's
indicator at every subscriber (the ISPs' blocking feeds included) and its rewrite replaced it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.tlp import TLP
from tests.helpers.bus import Bus, make_bus

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def obus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    handle = make_bus(bootstrap, tmp_path_factory.mktemp("ownership"))
    handle.start()
    yield handle
    handle.stop()


def cert_indicator(modified: str = "2026-11-01T08:00:00.000Z", **props: Any) -> Obj:
    host = f"login-{uuid.uuid4().hex[:10]}.example.com"
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-01T08:00:00.000Z",
        "modified": modified,
        "name": "Phishing page",
        "pattern": f"[url:value = 'http://{host}/verify']",
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00.000Z",
        "indicator_types": ["malicious-activity"],
        "confidence": 80,
        "object_marking_refs": [TLP.GREEN.marking_id],
        **props,
    }


def indicators(bus: Bus, subscriber: str, pattern: str) -> list[Obj]:
    return [
        o
        for o in bus.objects(bus.names.deliver(subscriber))
        if o.get("type") == "indicator" and o.get("pattern") == pattern
    ]


def wait_until(check: Any, what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def later(stamp: str) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(days=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def foreign_letters(bus: Bus, object_id: str) -> list[Obj]:
    return [
        letter
        for letter in bus.objects(bus.names.deadletter)
        if any(
            r["reason"] == "foreign_id" and r.get("object_id") == object_id
            for r in letter.get("reasons", [])
        )
    ]


def cli_publish(bus: Bus, org: str, obj: Obj, tmp_path: Path) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_bytes(orjson.dumps(obj))
    result = bus.cli("publish", "--as", org, str(path))
    assert result.returncode == 0, result.stderr.decode()


def test_member_cannot_revoke_or_replace_the_certs_indicator(obus: Bus, tmp_path: Path) -> None:
    original = cert_indicator()
    obus.publish("cert", original)
    # What bank-a learns from its own attributed delivery: the source id and its version.
    mine = wait_until(lambda: indicators(obus, "bank-a", original["pattern"]), "bank-a delivery")
    source = mine[0]["x_stixbus_sources"][0]
    assert source["source_ref"] == original["id"]
    wait_until(lambda: indicators(obus, "isp-one", original["pattern"]), "isp-one delivery")

    hijack = {k: v for k, v in original.items() if k != "created_by_ref"}
    cli_publish(
        obus,
        "bank-a",
        {**hijack, "modified": "2026-11-02T08:00:00.000Z", "revoked": True},
        tmp_path,
    )
    cli_publish(
        obus,
        "bank-a",
        {
            **hijack,
            "modified": "2026-11-03T08:00:00.000Z",
            "confidence": 5,
            "valid_until": "2026-11-03T09:00:00.000Z",
        },
        tmp_path,
    )
    # Either the ownership check drops both (dead letters) or the hijack reaches the ISPs.
    wait_until(
        lambda: len(foreign_letters(obus, original["id"])) >= 2
        or any(o.get("revoked") for o in indicators(obus, "isp-one", original["pattern"])),
        "the hijack's outcome",
    )

    for subscriber in ("isp-one", "isp-two", "bank-b"):
        delivered = indicators(obus, subscriber, original["pattern"])
        assert delivered, subscriber
        assert not any(o.get("revoked") for o in delivered), f"{subscriber} got a revocation"
        assert {o["confidence"] for o in delivered} == {80}, f"{subscriber} got bank-a's rewrite"


def test_receipt_is_not_an_oracle_for_foreign_ids(obus: Bus, tmp_path: Path) -> None:
    original = cert_indicator()
    obus.publish("cert", original)
    wait_until(lambda: indicators(obus, "bank-a", original["pattern"]), "bank-a delivery")
    probe = {**original, "modified": original["modified"], "name": "probe"}
    submission = obus.publish("bank-a", probe)
    wait_until(lambda: foreign_letters(obus, original["id"]), "foreign_id dead letter")
    receipts = [
        r for r in obus.objects(obus.names.receipts("bank-a")) if r["submission_id"] == submission
    ]
    assert receipts and all(r["rejected"] == 0 for r in receipts), receipts
    # A fresh id gets the very same receipt: nothing tells bank-a someone holds the first.
    fresh = obus.publish("bank-a", {**probe, "id": f"indicator--{uuid.uuid4()}"})
    twin = wait_until(
        lambda: [
            r for r in obus.objects(obus.names.receipts("bank-a")) if r["submission_id"] == fresh
        ],
        "receipt of the fresh id",
    )
    assert [(r["accepted"], r["rejected"]) for r in receipts] == [
        (r["accepted"], r["rejected"]) for r in twin
    ]


def test_same_version_other_content_in_a_later_submission_is_quarantined(obus: Bus) -> None:
    first = cert_indicator()
    obus.publish("cert", first)
    wait_until(lambda: indicators(obus, "isp-one", first["pattern"]), "first delivery")
    host = f"other-{uuid.uuid4().hex[:10]}.example.com"
    rewrite = {**first, "pattern": f"[url:value = 'http://{host}/verify']"}
    submission = obus.publish("cert", rewrite)
    conflicts = wait_until(
        lambda: [
            r
            for r in obus.objects(obus.names.receipts("cert"))
            if r["submission_id"] == submission
            and any(x["reason"] == "version_conflict" for x in r["rejections"])
        ],
        "version_conflict receipt",
    )
    assert conflicts
    time.sleep(2)
    assert indicators(obus, "isp-one", rewrite["pattern"]) == []


def test_a_minted_id_cannot_be_claimed(obus: Bus, tmp_path: Path) -> None:
    original = cert_indicator()
    obus.publish("cert", original)
    minted = wait_until(lambda: indicators(obus, "bank-a", original["pattern"]), "bank-a delivery")[
        0
    ]
    relayed = {k: v for k, v in minted.items() if k not in ("created_by_ref", "x_stixbus_sources")}
    cli_publish(obus, "bank-a", {**relayed, "modified": later(minted["modified"])}, tmp_path)
    wait_until(lambda: foreign_letters(obus, minted["id"]), "foreign_id for the minted id")
