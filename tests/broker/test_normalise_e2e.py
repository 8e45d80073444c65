"""Normalise on the real broker: poison input, identity binding, receipts and dead letters."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from schemas.envelope import SUBMISSION_HEADER
from tests.helpers.bus import Bus

CERT_ID = "identity--d6909adb-7068-499b-9d68-dbf814d02486"
OUTSIDER_ID = "identity--0b6e1f6e-4a0c-4f44-9d39-3b8a3f1c2d11"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def indicator(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-01T08:00:00.000Z",
        "modified": "2026-11-01T08:00:00.000Z",
        "name": "Phishing page",
        "pattern": f"[url:value = '{url}']",
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00Z",
        "labels": ["phishing"],
        "confidence": 80,
        "object_marking_refs": [GREEN],
        **extra,
    }


def bundle(*objects: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects})


async def send_in_order(bus: Bus, topic: str, payloads: list[tuple[str, bytes]]) -> None:
    """All to partition 0, in order: what a poison record could block is what follows it."""
    producer = AIOKafkaProducer(**bus.conn, acks="all", max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for submission_id, payload in payloads:
            await producer.send_and_wait(
                topic,
                payload,
                partition=0,
                headers=[(SUBMISSION_HEADER, submission_id.encode())],
            )
    finally:
        await producer.stop()


def receipts_by_id(bus: Bus, org: str, expect: int) -> dict[str, dict[str, Any]]:
    return {r["submission_id"]: r for r in bus.objects(bus.names.receipts(org), expect=expect)}


def test_poison_records_do_not_block_the_partition_behind_them(bus: Bus) -> None:
    good = indicator("http://after-the-poison.example/login")
    deep = b"[" * 5000 + b"]" * 5000
    poison = [
        ("poison-utf8", b"\xff\xfe\x00garbage\x00"),
        ("poison-json", b'{"type": "bundle", "objects": [ {'),
        ("poison-deep", deep),
        ("poison-nul", bundle(indicator("http://nul.example/\u0000x"))),
        ("good", bundle(good)),
    ]
    asyncio.run(send_in_order(bus, bus.names.ingest("cert"), poison))

    receipts = receipts_by_id(bus, "cert", expect=len(poison))
    assert set(receipts) >= {sid for sid, _ in poison}, "every submission gets a receipt"
    for sid, _ in poison[:-1]:
        assert receipts[sid]["accepted"] == 0 and receipts[sid]["rejected"] >= 1, receipts[sid]
        assert receipts[sid]["rejections"][0]["reason"], receipts[sid]
        assert receipts[sid]["rejections"][0]["message"]
    assert receipts["good"]["accepted_ids"] == [good["id"]]

    letters = bus.objects(bus.names.deadletter, expect=len(poison) - 1)
    lettered = {d["submission_id"] for d in letters}
    assert lettered >= {sid for sid, _ in poison[:-1]}, "rejected payloads kept verbatim"
    utf8 = next(d for d in letters if d["submission_id"] == "poison-utf8")
    assert utf8["payload_encoding"] == "base64"

    delivered = bus.objects(bus.names.deliver("bank-a"), expect=1)
    assert any(
        ref.get("source_ref") == good["id"]
        for o in delivered
        for ref in o.get("x_stixbus_sources", [])
    ), "the valid submission behind the poison was routed"


def test_identity_is_bound_to_the_ingest_topic(bus: Bus) -> None:
    impersonating = indicator("http://claims-to-be-cert.example/", created_by_ref=CERT_ID)
    relayed_by_bank = indicator("http://osint-by-bank.example/", created_by_ref=OUTSIDER_ID)
    relayed_by_cert = indicator("http://osint-by-cert.example/", created_by_ref=OUTSIDER_ID)
    unmarked = indicator("http://unmarked.example/")
    del unmarked["object_marking_refs"]
    bank_sub = bus.publish("bank-a", bundle(impersonating, relayed_by_bank, unmarked))
    cert_sub = bus.publish("cert", bundle(relayed_by_cert))

    bank_receipt = receipts_by_id(bus, "bank-a", expect=1)[bank_sub]
    reasons = {r["object_id"]: r["reason"] for r in bank_receipt["rejections"]}
    assert reasons[impersonating["id"]] == "impersonation"
    assert reasons[relayed_by_bank["id"]] == "relay_not_allowed"
    assert bank_receipt["accepted_ids"] == [unmarked["id"]]
    cert_receipt = receipts_by_id(bus, "cert", expect=1)[cert_sub]
    assert cert_receipt["accepted_ids"] == [relayed_by_cert["id"]], "the CERT may relay OSINT"

    normalized = [
        r
        for r in bus.objects(bus.names.normalized, expect=2)
        if r["object_id"] in {unmarked["id"], relayed_by_cert["id"]}
    ]
    by_id = {r["object_id"]: r for r in normalized}
    assert by_id[unmarked["id"]]["publisher"] == "bank-a"
    assert by_id[unmarked["id"]]["tlp"] == 2, "unmarked takes bank-a's default TLP (AMBER)"
    assert by_id[unmarked["id"]]["tlp_inherited"] is True
    assert (
        by_id[unmarked["id"]]["object"]["created_by_ref"] == bus.registry.get("bank-a").identity_id
    )
    assert by_id[relayed_by_cert["id"]]["object"]["created_by_ref"] == OUTSIDER_ID


def test_receipts_command_shows_rejections(bus: Bus) -> None:
    sid = bus.publish("isp-one", b"not json at all")
    bus.objects(bus.names.receipts("isp-one"), expect=1)
    result = bus.cli("receipts", "--as", "isp-one")
    assert result.returncode == 0, result.stderr.decode()
    lines = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    mine = next(r for r in lines if r["submission_id"] == sid)
    assert mine["rejected"] == 1 and mine["rejections"][0]["reason"] == "invalid_json"


def test_same_version_with_different_content_is_quarantined_not_routed(bus: Bus) -> None:
    original = indicator("http://conflict.example/login")
    rewritten = {**original, "name": "Same id and modified, different content", "confidence": 30}
    first = bus.publish("cert", bundle(original))
    second = bus.publish("cert", bundle(rewritten))

    def conflict_receipt() -> dict[str, Any] | None:
        for receipt in bus.objects(bus.names.receipts("cert")):
            reasons = [r["reason"] for r in receipt.get("rejections", [])]
            if receipt["submission_id"] == second and "version_conflict" in reasons:
                return receipt
        return None

    deadline = time.monotonic() + 30
    while conflict_receipt() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    receipt = conflict_receipt()
    assert receipt is not None, "the conflicting version gets a version_conflict receipt"
    assert receipt["rejections"][0]["object_id"] == original["id"]
    letters = [d for d in bus.objects(bus.names.deadletter) if d["submission_id"] == second]
    assert letters and letters[0]["reasons"][0]["reason"] == "version_conflict"
    assert orjson.loads(letters[0]["payload"])["name"] == rewritten["name"]

    delivered = [
        o
        for o in bus.objects(bus.names.deliver("bank-a"))
        if any(ref.get("source_ref") == original["id"] for ref in o.get("x_stixbus_sources", []))
    ]
    assert delivered, "the first version was routed"
    assert {o.get("confidence") for o in delivered} == {original["confidence"]}, (
        "the conflicting content never reaches a subscriber"
    )
    assert first != second


def test_large_submissions_receipts_and_dead_letters_fit_on_the_bus(bus: Bus) -> None:
    """Records above Kafka's 1 MiB default: a 10,000-object bundle rejected object by object (a
    multi-megabyte receipt), a 3 MiB submission of control characters (its dead letter), and a
    2 MiB valid bundle all get through, and what follows them still flows."""
    bad = [
        {**indicator(f"http://bad-{n}.example/"), "valid_from": "yesterday"} for n in range(10_000)
    ]
    rejected_all = bus.publish("cert", bundle(*bad))
    control = bus.publish("cert", b"\x01" * (3 * 1024 * 1024))
    good = [indicator(f"http://big-{n}.example/login") for n in range(5000)]
    big = bundle(*good)
    assert len(big) > 2 * 1024 * 1024
    accepted_all = bus.publish("cert", big)
    after = indicator("http://after-the-big-ones.example/")
    last = bus.publish("cert", bundle(after))

    receipts = receipts_by_id(bus, "cert", expect=4)
    deadline = time.monotonic() + 90
    while not {rejected_all, control, accepted_all, last} <= set(receipts):
        assert time.monotonic() < deadline, f"missing receipts: {set(receipts)}"
        time.sleep(1)
        receipts = receipts_by_id(bus, "cert", expect=4)
    assert receipts[rejected_all]["rejected"] == 10_000
    assert len(receipts[rejected_all]["rejections"]) >= 10_000
    assert receipts[control]["accepted"] == 0
    assert receipts[accepted_all]["accepted"] == 5000
    assert receipts[last]["accepted_ids"] == [after["id"]]
    letter = next(
        d for d in bus.objects(bus.names.deadletter, expect=2) if d["submission_id"] == control
    )
    assert letter["payload_encoding"] == "base64"
