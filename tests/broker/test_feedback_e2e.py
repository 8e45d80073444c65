"""Sightings and false-positive reports back to producers, on a real broker (docs/feedback.md).

One worker for the module, with its own agreements: the CERT shares with the banks anonymously
(false positives lower the confidence), with the ISPs attributed (false positives withhold) and
with the central bank without a policy.  The coalescing window is one second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from stix2validator import ValidationOptions, validate_instance

from tests.helpers.agreements import BASE
from tests.helpers.bus import Bus, make_bus

Obj = dict[str, Any]
BANKS = ("bank-a", "bank-b", "bank-c")
ISPS = ("isp-one", "isp-two")


@pytest.fixture(scope="module")
def fbus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    home = tmp_path_factory.mktemp("feedback")
    agreements = [
        {**BASE, "id": "cert-banks", "subscribers": ["sector:bank"], "attribution": "anonymous",
         "false_positive": {"threshold": 2, "action": "lower_confidence", "confidence": 15}},
        {**BASE, "id": "cert-isps", "subscribers": ["sector:isp"], "tlp_ceiling": "green",
         "false_positive": {"threshold": 2, "action": "withhold"}},
        {**BASE, "id": "cert-regulator", "subscribers": ["central-bank"]},
    ]  # fmt: skip
    path = home / "agreements.yaml"
    path.write_text(yaml.safe_dump({"agreements": agreements}))
    handle = make_bus(
        bootstrap, home, STIXBUS_AGREEMENTS_PATH=str(path), STIXBUS_FEEDBACK_WINDOW_SECONDS="1"
    )
    handle.start()
    yield handle
    handle.stop()


def stix_errors(obj: Obj) -> list[str]:
    result = validate_instance(obj, ValidationOptions(version="2.1"))
    return [str(e) for e in result.errors]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def cert_indicator(marker: str, confidence: int = 80) -> Obj:
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
        "created": now(), "modified": now(), "name": "Phishing domain",
        "pattern": f"[domain-name:value = '{marker}.example']", "pattern_type": "stix",
        "valid_from": now(), "labels": ["phishing"], "confidence": confidence,
    }  # fmt: skip


def sighting(target: str, count: int = 1) -> Obj:
    return {
        "type": "sighting", "spec_version": "2.1", "id": f"sighting--{uuid.uuid4()}",
        "created": now(), "modified": now(), "sighting_of_ref": target, "count": count,
    }  # fmt: skip


def opinion(target: str) -> Obj:
    return {
        "type": "opinion", "spec_version": "2.1", "id": f"opinion--{uuid.uuid4()}",
        "created": now(), "modified": now(), "opinion": "strongly-disagree",
        "object_refs": [target],
    }  # fmt: skip


def wait_for(read: Callable[[], list[Obj]], check: Callable[[list[Obj]], bool], what: str,
             timeout: float = 40.0) -> list[Obj]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {found[-5:]}")
        time.sleep(0.5)


def delivered(bus: Bus, org: str, pred: Callable[[Obj], bool]) -> list[Obj]:
    return [o for o in bus.objects(bus.names.deliver(org), timeout=1) if pred(o)]


def minted_copy(bus: Bus, org: str, marker: str) -> Obj:
    def mine(o: Obj) -> bool:
        return o["type"] == "indicator" and marker in o.get("pattern", "")

    return wait_for(lambda: delivered(bus, org, mine), bool, f"{org}'s copy of {marker}")[0]


def aggregates(bus: Bus, kind: str, source_id: str) -> list[Obj]:
    ref = "sighting_of_ref" if kind == "sighting" else "object_refs"
    return delivered(
        bus, "cert", lambda o: o["type"] == kind and source_id in str(o.get(ref))
    )


def test_three_banks_sight_a_minted_cert_indicator_and_the_cert_gets_one_anonymous_count(
    fbus: Bus, tmp_path: Path
) -> None:
    marker = f"fb-{uuid.uuid4().hex[:10]}"
    ioc = cert_indicator(marker)
    fbus.publish("cert", ioc)
    sightings = {}
    for n, bank in enumerate(BANKS):
        copy = minted_copy(fbus, bank, marker)
        assert copy["id"] != ioc["id"] and copy["created_by_ref"] == fbus.registry.bus.identity_id
        sightings[bank] = sighting(copy["id"])
        if n == 0:  # the CLI path: `stixbus publish --as bank-a sighting.json`
            path = tmp_path / "sighting.json"
            path.write_bytes(orjson.dumps(sightings[bank]))
            sent = fbus.cli("publish", "--as", bank, str(path))
            assert sent.returncode == 0, sent.stderr.decode()
        else:
            fbus.publish(bank, sightings[bank])
    versions = wait_for(
        lambda: aggregates(fbus, "sighting", ioc["id"]),
        lambda found: any(o["count"] == 3 for o in found),
        "the CERT's aggregated sighting with count 3",
    )
    assert len({o["id"] for o in versions}) == 1  # one aggregated sighting, in versions
    latest = max(versions, key=lambda o: o["modified"])
    assert latest["sighting_of_ref"] == ioc["id"]  # the CERT's own id, not a minted one
    assert latest["created_by_ref"] == fbus.registry.bus.identity_id
    assert latest["count"] == 3 and latest["x_stixbus_reporting_orgs"] == 3
    assert "where_sighted_refs" not in latest
    for obj in versions:
        assert stix_errors(obj) == [], obj
    wire = orjson.dumps(fbus.objects(fbus.names.deliver("cert"), timeout=1)).decode()
    for bank in BANKS:
        member = fbus.registry.get(bank)
        assert member.identity_id not in wire and member.name not in wire
        assert sightings[bank]["id"] not in wire
    # The CLI path: the CERT consumes its aggregated sightings.
    out = fbus.cli("consume", "--as", "cert", "--from-beginning")
    assert out.returncode == 0, out.stderr.decode()
    consumed = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert any(o.get("sighting_of_ref") == ioc["id"] and o["count"] == 3 for o in consumed)
    # Sightings are feedback: no other subscriber receives a bank's sighting.
    for org in (*BANKS, *ISPS, "central-bank"):
        assert delivered(fbus, org, lambda o: o["type"] == "sighting") == [], org


def _comparable(receipt: Obj) -> Obj:
    """A receipt without what differs between two submissions anyway (their own ids, times)."""
    out = {k: v for k, v in receipt.items() if k not in ("submission_id", "received_at")}
    out["accepted_ids"] = len(out.get("accepted_ids", []))
    out["rejections"] = [{**r, "object_id": None} for r in out.get("rejections", [])]
    return out


def test_a_sighting_of_an_id_not_delivered_to_the_org_is_rejected_without_an_oracle(
    fbus: Bus,
) -> None:
    """bank-a probes with an id that went to bank-b and one that never existed: its receipts
    must be the same apart from its own ids and times."""
    marker = f"fb-{uuid.uuid4().hex[:10]}"
    ioc = cert_indicator(marker)
    fbus.publish("cert", ioc)
    bank_b_copy = minted_copy(fbus, "bank-b", marker)
    probes = {
        "foreign": fbus.publish("bank-a", sighting(bank_b_copy["id"])),
        "unknown": fbus.publish("bank-a", sighting(f"indicator--{uuid.uuid4()}")),
        "producer-id": fbus.publish("bank-a", opinion(ioc["id"])),  # the CERT's own id
    }

    def by_submission() -> list[Obj]:
        return [r for r in fbus.objects(fbus.names.receipts("bank-a"), timeout=1)
                if r["submission_id"] in probes.values()]  # fmt: skip

    receipts = wait_for(
        by_submission,
        lambda rs: sum(1 for r in rs if r["rejected"]) >= len(probes),
        "the rejection receipts",
    )
    shapes: dict[str, list[Obj]] = {}
    for name, submission in probes.items():
        mine = [r for r in receipts if r["submission_id"] == submission]
        assert len(mine) == 2, mine  # ingest's receipt, then the feedback stage's rejection
        accepted, rejected = sorted(mine, key=lambda r: r["rejected"])
        assert accepted["accepted"] == 1 and rejected["rejected"] == 1
        assert rejected["rejections"][0]["reason"] == "not_delivered_to_you"
        shapes[name] = [_comparable(accepted), _comparable(rejected)]
    foreign, unknown, producer = shapes["foreign"], shapes["unknown"], shapes["producer-id"]
    assert foreign == unknown
    assert producer[1]["rejections"][0]["message"] == unknown[1]["rejections"][0]["message"]
    # and the CERT heard nothing about it
    assert aggregates(fbus, "sighting", ioc["id"]) == []
    assert aggregates(fbus, "opinion", ioc["id"]) == []


def test_false_positive_reports_past_the_threshold_lower_confidence_or_withhold(
    fbus: Bus,
) -> None:
    marker = f"fb-{uuid.uuid4().hex[:10]}"
    ioc = cert_indicator(marker, confidence=80)
    fbus.publish("cert", ioc)
    copies = {org: minted_copy(fbus, org, marker) for org in (*BANKS, *ISPS, "central-bank")}
    assert all(c["confidence"] == 80 for c in copies.values())
    fbus.publish("isp-one", sighting(copies["isp-one"]["id"], count=7))  # attributed: named
    for bank in ("bank-a", "bank-b"):
        fbus.publish(bank, opinion(copies[bank]["id"]))

    def versions(org: str) -> list[Obj]:
        return delivered(fbus, org, lambda o: o.get("id") == copies[org]["id"])

    def revoked(vs: list[Obj]) -> bool:
        return any(v.get("revoked") for v in vs)

    def lowered(vs: list[Obj]) -> bool:
        return any(v.get("confidence") == 15 for v in vs)

    for org in (*ISPS, *BANKS):
        wait_for(partial(versions, org), revoked if org in ISPS else lowered, org)
    assert [v["confidence"] for v in versions("central-bank")] == [80]  # no policy there

    audit: list[Obj] = fbus.decisions(timeout=1)
    withheld = [a for a in audit if a["object_id"] == ioc["id"] and not a["allow"]
                and any(r["code"] == "false_positive" for r in a["reasons"])]  # fmt: skip
    assert {a["subscriber"] for a in withheld} == set(ISPS), withheld
    assert all("cert-isps" in a["reasons"][0]["message"] for a in withheld)
    capped = [a for a in audit if a["object_id"] == ioc["id"] and a["allow"]
              and any(t["kind"] == "lower_confidence" for t in a["transformations"])]  # fmt: skip
    assert {a["subscriber"] for a in capped} == set(BANKS)

    opinions = wait_for(
        lambda: aggregates(fbus, "opinion", ioc["id"]),
        lambda found: any(o["x_stixbus_false_positive_reports"] == 2 for o in found),
        "the CERT's aggregated false-positive opinion",
    )
    latest = max(opinions, key=lambda o: o["modified"])
    assert latest["opinion"] == "strongly-disagree" and latest["object_refs"] == [ioc["id"]]
    assert "authors" not in latest  # the banks' agreement is anonymous
    seen = wait_for(lambda: aggregates(fbus, "sighting", ioc["id"]), bool, "isp-one's sighting")
    isp = fbus.registry.get("isp-one")
    assert seen[-1]["where_sighted_refs"] == [isp.identity_id] and seen[-1]["count"] == 7
    for obj in (*opinions, *seen):
        assert stix_errors(obj) == [], obj
