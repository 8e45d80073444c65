"""Issue 5 end to end on the real broker: agreements hot reload, retirement, redaction,
TLP rules, audit completeness and the agreements CLI.

One worker for the whole module (the `bus` fixture).  Tests that change the agreements in force
put deploy/agreements.yaml back before they finish (`restored`), and every test publishes
objects with fresh ids and patterns, so the tests do not see each other's objects.

Most CLI calls run in-process (typer's CliRunner on the same commands the `stixbus` entry point
registers): a `stixbus` subprocess spends seconds importing connector libraries, which would
dominate the runtime.  One test runs the real entry point to check exit codes and output.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
import yaml
from stix2validator import ValidationOptions, validate_instance
from typer.testing import CliRunner, Result

from schemas.agreement import Agreement, load_agreements
from schemas.tlp import TLP
from stixbus.cli import agreements as agreement_commands
from stixbus.core.ids import stix_time
from stixbus.core.redact import no_onward_sharing_marking_id
from stixbus.settings import get_settings
from tests.helpers.bus import AGREEMENTS, Bus

# --------------------------------------------------------------------------------------------
# helpers


def stix_errors(obj: dict[str, Any]) -> list[str]:
    result = validate_instance(obj, ValidationOptions(version="2.1"))
    return [str(e) for e in result.errors]


def token() -> str:
    return uuid.uuid4().hex[:12]


_MARKER = re.compile(r"[0-9a-f]{12}")


def marker(obj: dict[str, Any]) -> str:
    """The unique token in an object's pattern (survives canonicalisation)."""
    found = _MARKER.search(obj["pattern"])
    assert found, obj["pattern"]
    return found.group(0)


def bundle(*objects: dict[str, Any]) -> dict[str, Any]:
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects)}


def indicator(
    pattern: str, tlp: TLP, labels: list[str], confidence: int = 90, **extra: Any
) -> dict[str, Any]:
    now = stix_time(datetime.now(UTC))
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": now,
        "modified": now,
        "name": "stixbus agreements e2e",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": now,
        "indicator_types": ["malicious-activity"],
        "labels": labels,
        "confidence": confidence,
        "object_marking_refs": [tlp.marking_id],
        **extra,
    }


def decisions(bus: Bus) -> list[dict[str, Any]]:
    """Every decision on the audit topic (one entry per route step folds them)."""
    return bus.decisions()


def audit_for(bus: Bus, object_id: str, timeout: float = 40.0) -> dict[str, dict[str, Any]]:
    """The audit records of one object version, by subscriber; waits for one per subscriber."""
    want = len(bus.registry.subscribers)
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in decisions(bus) if r["object_id"] == object_id]
        if len(records) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    by_subscriber = {r["subscriber"]: r for r in records}
    assert len(records) == want, (
        f"{object_id}: {len(records)} audit record(s), expected {want}\n{bus.log_tail()}"
    )
    assert len(by_subscriber) == want, f"duplicate audit records for {object_id}: {records}"
    return by_subscriber


def codes(record: dict[str, Any]) -> set[str]:
    return {r["code"] for r in record["reasons"]}


def delivered(
    bus: Bus, org: str, match: Callable[[dict[str, Any]], bool], expect: bool = True
) -> list[dict[str, Any]]:
    """Objects on deliver.<org> that `match`; when `expect`, waits until one arrives."""
    deadline = time.monotonic() + (30.0 if expect else 0.0)
    while True:
        found = [o for o in bus.objects(bus.names.deliver(org)) if match(o)]
        if found or not expect or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def with_pattern(part: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: o.get("type") == "indicator" and part in str(o.get("pattern", ""))


_VERSION_LINE = re.compile(r'^stixbus_agreement_version\{agreement="([^"]+)"\} (\S+)$', re.M)


def versions_in_worker(bus: Bus) -> dict[str, int]:
    """What the worker's router has in force, from its /metrics."""
    with urllib.request.urlopen(bus.web + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {m[1]: int(float(m[2])) for m in _VERSION_LINE.finditer(text)}


def wait_in_force(bus: Bus, agreement_id: str, version: int | None, timeout: float = 20) -> float:
    """Seconds until the worker has `version` of the agreement in force (None: retired)."""
    started = time.monotonic()
    while versions_in_worker(bus).get(agreement_id) != version:
        assert time.monotonic() - started < timeout, (
            f"worker still has {agreement_id} at {versions_in_worker(bus).get(agreement_id)}, "
            f"expected {version}\n{bus.log_tail()}"
        )
        time.sleep(0.05)
    return time.monotonic() - started


def write_yaml(path: Path, agreements: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"agreements": agreements}, sort_keys=False))
    return path


def deploy_agreements() -> list[dict[str, Any]]:
    data = yaml.safe_load(AGREEMENTS.read_text())
    return list(data["agreements"])


def restore(bus: Bus) -> None:
    """deploy/agreements.yaml in force again, as the worker sees it."""
    bus.apply_agreements(AGREEMENTS, prune=True)
    for agreement in load_agreements(AGREEMENTS):
        wait_in_force(bus, agreement.id, agreement.version)
    extra = set(versions_in_worker(bus)) - {a.id for a in load_agreements(AGREEMENTS)}
    for agreement_id in extra:
        wait_in_force(bus, agreement_id, None)


@pytest.fixture
def restored(bus: Bus) -> Iterator[Bus]:
    yield bus
    restore(bus)


def cli_app() -> typer.Typer:
    """The agreement commands as `stixbus` registers them (see stixbus/cli/main.py)."""
    app = typer.Typer()
    app.add_typer(agreement_commands.app, name="agreements")
    app.command("explain")(agreement_commands.explain)
    app.command("audit")(agreement_commands.audit)
    return app


def run_cli(bus: Bus | None, *args: str) -> Result:
    env = {"COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}
    if bus is not None:
        env.update({k: v for k, v in bus.env.items() if k.startswith("STIXBUS_")})
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli_app(), list(args), env=env, catch_exceptions=False)
    finally:
        get_settings.cache_clear()


# --------------------------------------------------------------------------------------------
# CLI without routing


def test_check_accepts_the_deployed_agreements() -> None:
    result = run_cli(None, "agreements", "check", str(AGREEMENTS))
    assert result.exit_code == 0, result.output
    assert "0 error(s)" in result.output


def test_check_rejects_red_through_sector_and_unknown_org(bus: Bus, tmp_path: Path) -> None:
    bad = deploy_agreements()[:1]
    bad[0] = {**bad[0], "tlp_ceiling": "red", "onward_sharing": False}
    bad.append({**deploy_agreements()[1], "subscribers": ["isp-nine"]})
    path = write_yaml(tmp_path / "bad.yaml", bad)
    # the real entry point: exit status and the finding codes on stdout
    result = bus.cli("agreements", "check", str(path))
    output = result.stdout.decode()
    assert result.returncode == 1, output + result.stderr.decode()
    assert "red_through_sector" in output and "unknown_org" in output, output
    assert "isp-nine" in output and "error(s)" in output
    # and apply refuses it, changing nothing
    before = versions_in_worker(bus)
    with pytest.raises(agreement_commands.AgreementsError, match="nothing applied"):
        bus.apply_agreements(path)
    assert versions_in_worker(bus) == before


def test_explain_prints_verdict_reasons_and_agreement(bus: Bus, tmp_path: Path) -> None:
    amber_url = indicator(
        f"[url:value = 'http://explain-{token()}.example/login']", TLP.AMBER, ["phishing"]
    )
    path = tmp_path / "obj.json"
    path.write_bytes(orjson.dumps(amber_url))

    allow = run_cli(bus, "explain", "--object", str(path), "--to", "bank-a", "--as", "cert")
    assert allow.exit_code == 0, allow.output
    assert "ALLOW" in allow.output and "cert-to-banks-fraud v1" in allow.output, allow.output
    assert "allowed: allowed by agreement cert-to-banks-fraud v1" in allow.output

    deny = run_cli(bus, "explain", "--object", str(path), "--to", "isp-one", "--as", "cert")
    assert deny.exit_code == 0, deny.output
    assert "DENY" in deny.output and "tlp_above_ceiling" in deny.output, deny.output
    assert "[cert-to-isps-blocking]" in deny.output

    # --agreements: a YAML file instead of what is in force
    offline = run_cli(
        None, "explain", "--object", str(path), "--to", "bank-b", "--agreements", str(AGREEMENTS)
    )
    assert "ALLOW" in offline.output, offline.output


@pytest.mark.parametrize("columns", [250, 80])
def test_list_shows_agreements_in_force(
    bus: Bus, columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole ids and ceilings, on a wide terminal and on an 80-column one (rich cuts cells)."""
    from stixbus.cli import agreements as agreements_cli

    monkeypatch.setattr(agreements_cli.out, "width", columns)
    result = run_cli(bus, "agreements", "list")
    assert result.exit_code == 0, result.output
    for agreement in load_agreements(AGREEMENTS):
        assert agreement.id in result.output, result.output
    assert "AMBER+STRICT" in result.output  # cert-to-prosecution-fiu's ceiling


# --------------------------------------------------------------------------------------------
# routing under changing agreements


def test_hot_reload_takes_effect_without_restart(restored: Bus, tmp_path: Path) -> None:
    bus = restored
    assert bus.proc is not None
    pid = bus.proc.pid
    before = indicator(
        f"[url:value = 'http://reload-{token()}.example/pay']", TLP.AMBER, ["phishing"]
    )
    bus.publish("cert", bundle(before))
    audit = audit_for(bus, before["id"])
    assert not audit["isp-one"]["allow"] and "tlp_above_ceiling" in codes(audit["isp-one"])
    assert audit["bank-a"]["allow"]

    # v2 raises the ISPs' ceiling to AMBER
    agreements = deploy_agreements()
    isps = next(a for a in agreements if a["id"] == "cert-to-isps-blocking")
    isps.update(version=2, tlp_ceiling="amber")
    started = time.monotonic()
    written, retired = bus.apply_agreements(write_yaml(tmp_path / "v2.yaml", agreements))
    applied = time.monotonic()
    assert written == ["cert-to-isps-blocking"] and retired == []
    reload_latency = wait_in_force(bus, "cert-to-isps-blocking", 2)

    after = indicator(
        f"[url:value = 'http://reload-{token()}.example/pay']", TLP.AMBER, ["phishing"]
    )
    bus.publish("cert", bundle(after))
    got = delivered(bus, "isp-one", with_pattern(marker(after)))
    end_to_end = time.monotonic() - started
    print(
        f"\nhot reload: apply call {applied - started:.2f}s; v2 in force in the worker "
        f"{applied - started + reload_latency:.2f}s after the apply started "
        f"({reload_latency:.2f}s after it returned); apply -> delivery of the next publication "
        f"{end_to_end:.2f}s"
    )
    assert reload_latency < 10
    assert len(got) == 1 and stix_errors(got[0]) == [], got
    assert TLP.AMBER.marking_id in got[0]["object_marking_refs"]
    audit = audit_for(bus, after["id"])
    assert audit["isp-one"]["allow"] and audit["isp-one"]["agreement_version"] == 2
    assert bus.proc.pid == pid and bus.proc.poll() is None  # no restart happened
    # the earlier publication is not delivered retroactively
    assert delivered(bus, "isp-one", with_pattern(marker(before)), expect=False) == []


def test_retired_agreement_stops_deliveries(restored: Bus, tmp_path: Path) -> None:
    bus = restored

    def green_domain() -> dict[str, Any]:
        return indicator(f"[domain-name:value = 'c2-{token()}.example']", TLP.GREEN, ["botnet"])

    first = green_domain()
    bus.publish("cert", first)
    assert delivered(bus, "isp-two", with_pattern(marker(first)))

    # retire by tombstone through the CLI
    result = run_cli(bus, "agreements", "retire", "cert-to-isps-blocking")
    assert result.exit_code == 0 and "retired cert-to-isps-blocking" in result.output
    wait_in_force(bus, "cert-to-isps-blocking", None)
    listed = run_cli(bus, "agreements", "list").output
    assert "cert-to-isps-blocking" not in listed and "cert-to-banks-fraud" in listed

    second = green_domain()
    bus.publish("cert", second)
    audit = audit_for(bus, second["id"])
    for isp in ("isp-one", "isp-two"):
        assert not audit[isp]["allow"] and "no_matching_agreement" in codes(audit[isp]), audit[isp]
        assert not audit[isp]["delivered"]
        assert delivered(bus, isp, with_pattern(marker(second)), expect=False) == []

    # retiring what is not in force is an error, not a silent tombstone
    with pytest.raises(agreement_commands.AgreementsError, match="not in force"):
        run_cli(bus, "agreements", "retire", "cert-to-isps-blocking")

    # retire by apply --prune: the file no longer lists cert-to-central-bank
    restore(bus)
    kept = [a for a in deploy_agreements() if a["id"] != "cert-to-central-bank"]
    written, retired = bus.apply_agreements(write_yaml(tmp_path / "pruned.yaml", kept))
    assert written == [] and retired == ["cert-to-central-bank"]
    wait_in_force(bus, "cert-to-central-bank", None)
    third = indicator(f"[url:value = 'http://prune-{token()}.example/']", TLP.GREEN, ["phishing"])
    bus.publish("cert", third)
    audit = audit_for(bus, third["id"])
    assert not audit["central-bank"]["allow"] and audit["bank-a"]["allow"]
    assert "no_matching_agreement" in codes(audit["central-bank"])


def test_red_and_amber_strict_only_to_named_recipients(restored: Bus) -> None:
    bus = restored
    # An agreement that names bank-a AND covers every bank through the sector, up to RED.  The
    # linter refuses it (red_through_sector), so it is written to the topic directly: the router
    # must still only deliver RED/AMBER+STRICT to the bank named one by one.
    lab = Agreement.model_validate(
        {
            **load_agreements(AGREEMENTS).get("cert-to-banks-fraud").model_dump(),
            "id": "lab-red-mixed",
            "subscribers": ["bank-a", "sector:bank"],
            "tlp_ceiling": "red",
            "labels": None,
            "onward_sharing": False,
        }
    )
    asyncio.run(agreement_commands.write_agreements(bus.settings, [lab], []))
    wait_in_force(bus, "lab-red-mixed", 1)

    red = indicator(f"[url:value = 'http://red-{token()}.example/']", TLP.RED, ["fraud"])
    strict = indicator(
        f"[url:value = 'http://strict-{token()}.example/']", TLP.AMBER_STRICT, ["phishing"], 80
    )
    bus.publish("cert", bundle(red, strict))
    red_audit, strict_audit = audit_for(bus, red["id"]), audit_for(bus, strict["id"])

    assert red_audit["bank-a"]["allow"] and red_audit["bank-a"]["agreement_id"] == "lab-red-mixed"
    assert not red_audit["bank-a"]["onward_sharing"]
    for bank in ("bank-b", "bank-c"):
        assert not red_audit[bank]["allow"]
        assert "red_requires_named_recipient" in codes(red_audit[bank]), red_audit[bank]
        assert not strict_audit[bank]["allow"]
        assert "amber_strict_not_named" in codes(strict_audit[bank]), strict_audit[bank]
    # RED reaches nobody else: cert-to-prosecution-fiu stops at AMBER+STRICT
    assert {s for s, r in red_audit.items() if r["allow"]} == {"bank-a"}
    # AMBER+STRICT: bank-a (named) and prosecution/fiu (named in cert-to-prosecution-fiu)
    assert {s for s, r in strict_audit.items() if r["allow"]} == {"bank-a", "prosecution", "fiu"}
    assert not any(r["onward_sharing"] for r in strict_audit.values())

    red_part, strict_part = marker(red), marker(strict)
    got_red = delivered(bus, "bank-a", with_pattern(red_part))
    got_strict = delivered(bus, "prosecution", with_pattern(strict_part))
    for obj, tlp in ((got_red[0], TLP.RED), (got_strict[0], TLP.AMBER_STRICT)):
        assert stix_errors(obj) == [], obj
        assert tlp.marking_id in obj["object_marking_refs"]
        assert no_onward_sharing_marking_id(bus.registry) in obj["object_marking_refs"]
    assert delivered(bus, "fiu", with_pattern(strict_part))
    for bank in ("bank-b", "bank-c"):
        assert delivered(bus, bank, with_pattern(red_part), expect=False) == []
        assert delivered(bus, bank, with_pattern(strict_part), expect=False) == []


def _identity_of(obj: dict[str, Any]) -> object:
    """What ties a forwarded copy to its original without the original id."""
    return obj.get("sighting_of_ref") or obj.get("pattern")


def test_redaction_and_pseudonyms_hold_on_the_wire(bus: Bus) -> None:
    """bank-a's objects reach other banks anonymously and the central bank pseudonymously."""
    producer = bus.registry.get("bank-a").identity_id
    snort_id = f"indicator--{uuid.uuid4()}"
    # A sighting of an object of the same submission is the bank's own intel, routed under the
    # agreements (a sighting of a received id is feedback instead: docs/feedback.md).
    sighting: dict[str, Any] = {
        "type": "sighting",
        "spec_version": "2.1",
        "id": f"sighting--{uuid.uuid4()}",
        "created": stix_time(datetime.now(UTC)),
        "modified": stix_time(datetime.now(UTC)),
        "sighting_of_ref": snort_id,
        "where_sighted_refs": [producer],
        "count": 3,
        "labels": ["fraud"],
        "description": f"Card fraud seen at branch {token()}",
        "x_branch_code": "BR-0042",
        "object_marking_refs": [TLP.AMBER.marking_id],
    }
    snort = indicator(
        f'alert tcp any any -> any any (msg:"mule {token()}"; sid:1000001;)',
        TLP.AMBER,
        ["money-mule"],
        pattern_type="snort",
        description="Mule account traffic seen by our fraud team",
        x_internal_case="CASE-77",
    )
    snort["id"] = snort_id
    minted = indicator(
        f"[url:value = 'http://mule-{token()}.example/']",
        TLP.AMBER,
        ["fraud"],
        x_internal_case="CASE-78",
    )
    bus.publish(
        "bank-a",
        bundle(sighting, snort, minted),
    )
    for obj in (sighting, snort, minted):
        audit = audit_for(bus, obj["id"])
        assert audit["bank-b"]["attribution"] == "anonymous", audit["bank-b"]
        assert audit["central-bank"]["attribution"] == "pseudonymous", audit["central-bank"]
        assert audit["cert"]["attribution"] == "attributed"

    forwarded = (sighting, snort)
    for org, mode in (("bank-b", "anonymous"), ("central-bank", "pseudonymous")):
        everything = bus.objects(bus.names.deliver(org))
        for obj in everything:
            assert stix_errors(obj) == [], obj
        for original in forwarded:
            copies = [
                o
                for o in everything
                if o["type"] == original["type"]
                and _identity_of(o) == _identity_of(original)
                and o.get("modified") == original["modified"]
            ]
            assert len(copies) == 1, (org, original["id"], everything)
            copy = copies[0]
            wire = orjson.dumps(copy).decode()
            assert producer not in wire, (org, copy)  # producer identity nowhere
            assert original["id"] not in wire, (org, copy)  # nor its (re-identifying) id
            assert not [k for k in copy if k.startswith("x_")], copy  # dropped: x_*
            assert copy["created"] == original["created"]
            assert copy["modified"] == original["modified"]
            assert no_onward_sharing_marking_id(bus.registry) in copy["object_marking_refs"]
            if mode == "anonymous":
                assert copy["created_by_ref"] == bus.registry.bus.identity_id
                # free text often names the contributor: dropped unless the agreement keeps it
                assert "description" not in copy
            else:
                assert copy["created_by_ref"] != bus.registry.bus.identity_id
                assert copy["description"].startswith("pseudonym:")
                assert copy["description"] != original["description"]
                identities = {o["id"] for o in everything if o["type"] == "identity"}
                assert copy["created_by_ref"] in identities  # the pseudonym is delivered too
            if original is sighting:
                assert copy["where_sighted_refs"] == [copy["created_by_ref"]]
        # the bus-minted indicator: created by the bus, sources shown per attribution
        minted_copy = delivered(bus, org, with_pattern(marker(minted)))
        assert len(minted_copy) == 1
        wire = orjson.dumps(minted_copy[0]).decode()
        assert producer not in wire and minted["id"] not in wire, minted_copy
        assert "CASE-78" not in wire

    # the attributed copy for the CERT keeps the producer and the link to the original
    cert_copy = delivered(bus, "cert", lambda o: _identity_of(o) == sighting["sighting_of_ref"])
    assert cert_copy and cert_copy[0]["created_by_ref"] == producer
    assert stix_errors(cert_copy[0]) == []


def test_audit_record_per_decision(bus: Bus) -> None:
    obj = indicator(f"[url:value = 'http://audit-{token()}.example/']", TLP.GREEN, ["phishing"])
    bus.publish("cert", obj)
    audit = audit_for(bus, obj["id"])
    assert set(audit) == {o.id for o in bus.registry.subscribers}
    assert "self_delivery" in codes(audit["cert"])
    allowed = {s for s, r in audit.items() if r["allow"]}
    assert {"bank-a", "bank-b", "bank-c", "isp-one", "isp-two", "central-bank"} <= allowed
    for subscriber, record in audit.items():
        assert record["delivered"] == record["allow"], record
        assert record["publisher"] == "cert" and record["reasons"], record
        if record["allow"]:
            assert record["agreement_id"] and record["agreement_version"] == 1
            assert len(delivered(bus, subscriber, with_pattern(marker(obj)))) == 1
    time.sleep(1.0)  # nothing more arrives for this version
    assert len([r for r in decisions(bus) if r["object_id"] == obj["id"]]) == len(
        audit
    )

    result = run_cli(bus, "audit", "--to", "bank-a")
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines() if line.strip()]
    assert lines and all(entry["subscriber"] == "bank-a" for entry in lines)
    mine = [entry for entry in lines if entry["object_id"] == obj["id"]]
    assert len(mine) == 1 and mine[0]["allow"] and mine[0]["delivered"]
    assert mine[0]["agreement_id"] == "cert-to-banks-fraud"

    denied = run_cli(bus, "audit", "--to", "isp-one", "--denied")
    assert all(not orjson.loads(line)["allow"] for line in denied.output.splitlines() if line)
