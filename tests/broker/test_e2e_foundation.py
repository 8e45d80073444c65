"""End to end on the real broker: a CERT bundle published through the CLI reaches subscribers."""

from __future__ import annotations

import orjson
from stix2validator import ValidationOptions, validate_instance

from tests.helpers.bus import Bus
from tests.helpers.paths import REPO_ROOT

DEMO = REPO_ROOT / "deploy" / "demo" / "cert.json"


def stix_errors(obj: dict) -> list[str]:
    result = validate_instance(obj, ValidationOptions(version="2.1"))
    return [str(e) for e in result.errors]


def test_cert_bundle_via_cli_reaches_banks_as_valid_stix(bus: Bus) -> None:
    sent = bus.cli("publish", "--as", "cert", str(DEMO))
    assert sent.returncode == 0, sent.stderr.decode()
    submission_id = orjson.loads(sent.stdout)["submission_id"]

    receipts = bus.objects(bus.names.receipts("cert"), expect=1)
    receipt = next(r for r in receipts if r["submission_id"] == submission_id)
    published_ids = {o["id"] for o in orjson.loads(DEMO.read_bytes())["objects"]}
    assert set(receipt["accepted_ids"]) == published_ids

    for bank in ("bank-a", "bank-b", "bank-c"):
        delivered = bus.objects(bus.names.deliver(bank), expect=1)
        assert delivered, f"{bank} received nothing"
        for obj in delivered:
            assert stix_errors(obj) == [], obj
        sources = {
            ref.get("source_ref")
            for o in delivered
            if o["type"] == "indicator"
            for ref in o.get("x_stixbus_sources", [])
        }
        assert sources & published_ids, f"{bank} got none of the CERT's indicators"


def test_cli_consume_prints_json_lines(bus: Bus) -> None:
    bus.cli("publish", "--as", "cert", str(DEMO))
    bus.objects(bus.names.deliver("bank-b"), expect=1)
    result = bus.cli("consume", "--as", "bank-b", "--from-beginning")
    assert result.returncode == 0, result.stderr.decode()
    lines = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines and all(o["type"] for o in lines)
    # consume drops a redelivered (id, modified): every printed version is distinct
    versions = [(o["id"], o.get("modified")) for o in lines]
    assert len(versions) == len(set(versions))


def test_cli_errors_are_one_line(bus: Bus) -> None:
    result = bus.cli("publish", "--as", "no-such-org", str(DEMO))
    assert result.returncode != 0
    message = result.stderr.decode().strip()
    assert "no-such-org" in message and "Traceback" not in message
