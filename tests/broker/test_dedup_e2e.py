"""De-duplication end to end on the real broker: one bus-minted indicator per key and subscriber.

One worker serves the module (expiry scan every second); every test uses its own URLs, so keys
never collide.  The kill -9 test runs its own worker with the rocksdb store.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stixbus.core.ids import stix_time
from stixbus.kafka.client import VersionFilter
from tests.helpers.bus import AGREEMENTS, Bus, make_bus
from tests.helpers.dedup_samples import indicator, version

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def dbus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    handle = make_bus(bootstrap, tmp_path_factory.mktemp("dedup"), STIXBUS_EXPIRY_SCAN_SECONDS="1")
    handle.start()
    yield handle
    handle.stop()


def url() -> tuple[str, str]:
    """A fresh phishing URL: (pattern as published, canonical pattern)."""
    host = f"login-{uuid.uuid4().hex[:10]}.example"
    return f"[url:value = 'http://{host}/verify']", f"[url:value = 'http://{host}/verify']"


def received(bus: Bus, subscriber: str, pattern: str) -> list[Obj]:
    return [
        o
        for o in bus.objects(bus.names.deliver(subscriber))
        if o.get("type") == "indicator" and o.get("pattern") == pattern
    ]


def wait_for(
    bus: Bus,
    subscriber: str,
    pattern: str,
    done: Callable[[list[Obj]], bool],
    timeout: float = 30.0,
) -> list[Obj]:
    deadline = time.monotonic() + timeout
    while True:
        objects = received(bus, subscriber, pattern)
        if done(objects):
            return objects
        if time.monotonic() > deadline:
            raise AssertionError(f"{subscriber} got {objects!r} for {pattern}\n{bus.log_tail()}")
        time.sleep(0.5)


def sources(obj: Obj) -> int:
    return len(obj.get("x_stixbus_sources", []))


def revoked(objects: list[Obj]) -> bool:
    return any(o.get("revoked") for o in objects)


def test_cross_producer_duplicates_and_variants_land_on_one_key(dbus: Bus) -> None:
    host = f"pay-{uuid.uuid4().hex[:8]}.example"
    canonical = f"[url:value = 'http://{host}/login']"
    cert_a = indicator(f"[url:value = 'hxxp://{host.upper().replace('.', '[.]')}/login']")
    cert_b = indicator(f"[url:value = 'HTTP://{host}/login']")
    bank = indicator(f"[url:value = 'http://{host.replace('.', '[.]')}/login']")
    dbus.publish("cert", {"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                          "objects": [cert_a, cert_b]})  # fmt: skip
    dbus.publish("bank-a", bank)

    # bank-b sees the CERT's two (attributed) and bank-a's (anonymous): 3 sources, one id
    got = wait_for(dbus, "bank-b", canonical, lambda os: any(sources(o) == 3 for o in os))
    assert len({o["id"] for o in got}) == 1
    final = max(got, key=lambda o: o["modified"])
    refs = {r.get("source_ref") for r in final["x_stixbus_sources"]}
    assert {cert_a["id"], cert_b["id"]} <= refs and bank["id"] not in refs
    assert final["created_by_ref"] == dbus.registry.bus.identity_id
    # the CERT gets bank-a's only (never its own back); isp-one the CERT's only
    cert_got = wait_for(dbus, "cert", canonical, bool)
    assert [r["source_ref"] for r in cert_got[-1]["x_stixbus_sources"]] == [bank["id"]]
    isp = wait_for(dbus, "isp-one", canonical, lambda os: any(sources(o) == 2 for o in os))
    assert len({o["id"] for o in isp}) == 1


def test_identical_resubmissions_are_suppressed(dbus: Bus) -> None:
    pattern, canonical = url()
    obj = indicator(pattern, confidence=70)
    for _ in range(3):
        dbus.publish("cert", obj)
    dbus.publish("cert", version(obj, "2026-05-02T00:00:00.000Z", description="reworded"))
    # same key → same partition → processed in order: once the material change is in, the
    # resubmissions and the immaterial version have been processed too
    dbus.publish("cert", version(obj, "2026-05-03T00:00:00.000Z", confidence=95))
    got = wait_for(dbus, "bank-b", canonical, lambda os: any(o.get("confidence") == 95 for o in os))
    assert [o.get("confidence") for o in got] == [70, 95]
    assert len({(o["id"], o["modified"]) for o in got}) == 2


def test_revocation_by_one_source_then_both(dbus: Bus) -> None:
    pattern, canonical = url()
    cert_obj, bank_obj = indicator(pattern), indicator(pattern)
    dbus.publish("cert", cert_obj)
    dbus.publish("bank-a", bank_obj)
    wait_for(dbus, "bank-b", canonical, lambda os: any(sources(o) == 2 for o in os))

    dbus.publish("cert", version(cert_obj, "2026-05-02T00:00:00.000Z", revoked=True))
    wait_for(dbus, "isp-one", canonical, revoked)  # only the CERT vouched for isp-one
    assert not revoked(received(dbus, "bank-b", canonical))  # bank-a still vouches

    dbus.publish("bank-a", version(bank_obj, "2026-05-02T00:00:00.000Z", revoked=True))
    got = wait_for(dbus, "bank-b", canonical, revoked)
    assert sum(1 for o in got if o.get("revoked")) == 1 and got[-1]["revoked"] is True
    assert len({o["id"] for o in got}) == 1
    wait_for(dbus, "cert", canonical, revoked)


def test_expiry_by_timer(dbus: Bus) -> None:
    pattern, canonical = url()
    until = stix_time(datetime.now(UTC) + timedelta(seconds=4))
    dbus.publish("cert", indicator(pattern, valid_until=until))
    first = wait_for(dbus, "bank-b", canonical, bool)
    assert first[0]["valid_until"] == until and not revoked(first)
    got = wait_for(dbus, "bank-b", canonical, revoked, timeout=30)
    assert got[-1]["modified"] == until  # the moment it expired: a replay re-mints the same


def test_revocation_reaches_subscriber_whose_agreement_was_removed(
    dbus: Bus, tmp_path: Path
) -> None:
    pattern, canonical = url()
    obj = indicator(pattern)
    dbus.publish("cert", obj)
    wait_for(dbus, "bank-b", canonical, bool)

    document = yaml.safe_load(AGREEMENTS.read_text())
    document["agreements"] = [a for a in document["agreements"] if a["id"] != "cert-to-banks-fraud"]
    reduced = tmp_path / "agreements.yaml"
    reduced.write_text(yaml.safe_dump(document))
    dbus.apply_agreements(reduced)
    try:
        # wait until the worker routes with the reduced set: a new CERT indicator reaches the
        # ISPs but no bank
        probe, probe_canonical = url()
        deadline = time.monotonic() + 30
        while True:
            dbus.publish("cert", indicator(probe))
            isp = wait_for(dbus, "isp-one", probe_canonical, bool)
            if not received(dbus, "bank-b", probe_canonical):
                break
            assert time.monotonic() < deadline, "agreement removal never applied"
            probe, probe_canonical = url()
            assert isp
        dbus.publish("cert", version(obj, "2026-05-02T00:00:00.000Z", revoked=True))
        got = wait_for(dbus, "bank-b", canonical, revoked)
        assert got[-1]["revoked"] is True and got[-1]["id"] == got[0]["id"]
    finally:
        dbus.apply_agreements(AGREEMENTS)


def test_kill_9_mid_stream_loses_nothing(bootstrap: str, tmp_path: Path) -> None:
    bus = make_bus(bootstrap, tmp_path, STIXBUS_STORE="rocksdb://")
    try:
        bus.start()
        run = uuid.uuid4().hex[:8]
        patterns = [f"[url:value = 'http://k9-{run}-{n}.example/x']" for n in range(300)]
        batches = [patterns[i : i + 50] for i in range(0, len(patterns), 50)]
        bundles = [
            {"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
             "objects": [indicator(p) for p in batch]}
            for batch in batches
        ]  # fmt: skip
        for bundle in bundles[:4]:
            bus.publish("cert", bundle)
        deadline = time.monotonic() + 60
        while len(received_all(bus, "bank-b", run)) < 40:
            assert time.monotonic() < deadline, bus.log_tail()
            time.sleep(0.2)
        assert bus.proc is not None
        bus.stop(signal.SIGKILL)  # the whole process group, no clean shutdown
        for bundle in bundles[4:]:
            bus.publish("cert", bundle)
        bus.publish("cert", bundles[1])  # a resubmission across the crash changes nothing
        bus.start()

        for subscriber in ("bank-b", "isp-one"):
            deadline = time.monotonic() + 90
            while True:
                raw = received_all(bus, subscriber, run)
                if {o["pattern"] for o in raw} == set(patterns):
                    break
                assert time.monotonic() < deadline, (subscriber, len(raw), bus.log_tail())
                time.sleep(1)
            drop = VersionFilter()
            kept = [o for o in raw if drop.is_new(o)]
            per_key = Counter(o["pattern"] for o in kept)
            assert set(per_key.values()) == {1}, [k for k, n in per_key.items() if n > 1]
            assert len(kept) == len(patterns) and len(raw) >= len(kept)
        # Every delivery, replays included, has exactly one audit id (issue 17 point 3).
        deadline = time.monotonic() + 30
        while (verified := bus.cli("audit", "verify")).returncode != 0:
            assert time.monotonic() < deadline, verified.stdout.decode() + verified.stderr.decode()
            time.sleep(1)
        assert b"missing: 0  duplicated: 0" in verified.stdout, verified.stdout
    finally:
        bus.stop(signal.SIGKILL)


def received_all(bus: Bus, subscriber: str, run: str) -> list[Obj]:
    return [
        o
        for o in bus.objects(bus.names.deliver(subscriber))
        if o.get("type") == "indicator" and f"k9-{run}-" in str(o.get("pattern"))
    ]


def gauges(bus: Bus) -> tuple[int, int]:
    """(stixbus_dedup_keys, stixbus_expiry_index_keys) of the worker."""
    import urllib.request

    with urllib.request.urlopen(f"{bus.web}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    values = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in lines if line.startswith("stixbus_"))
    }
    return int(values["stixbus_dedup_keys"]), int(values["stixbus_expiry_index_keys"])


def wait_gauges(bus: Bus, expected: tuple[int, int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := gauges(bus)) != expected:
        assert time.monotonic() < deadline, f"{got} != {expected}\n{bus.log_tail()}"
        time.sleep(0.5)


def test_the_key_count_covers_the_table_and_the_index_only_keys_due_soon(
    bootstrap: str, tmp_path: Path
) -> None:
    """stixbus_dedup_keys counts every key (kept by the agent's creations and deletions, and
    recounted by the rebuild after a restart); the expiry index holds only the keys due within
    its horizon (here an hour)."""
    bus = make_bus(
        bootstrap, tmp_path, STIXBUS_EXPIRY_SCAN_SECONDS="1",
        STIXBUS_EXPIRY_HORIZON_SECONDS="3600", STIXBUS_DEDUP_GRACE_SECONDS="0",
    )  # fmt: skip
    try:
        bus.start()
        later, _ = url()
        soon, _ = url()
        gone, gone_canonical = url()
        in_a_year = stix_time(datetime.now(UTC) + timedelta(days=365))
        in_half_an_hour = stix_time(datetime.now(UTC) + timedelta(minutes=30))
        doomed = indicator(gone, valid_until=in_a_year)
        bus.publish("cert", indicator(later, valid_until=in_a_year))
        bus.publish("cert", indicator(soon, valid_until=in_half_an_hour))
        bus.publish("cert", doomed)
        wait_gauges(bus, (3, 1))  # 3 keys, the one due in 30 minutes held
        bus.publish("cert", version(doomed, "2026-05-02T00:00:00.000Z", revoked=True))
        wait_for(bus, "bank-b", gone_canonical, revoked)
        wait_gauges(bus, (2, 1))  # settled, then collected (grace 0): deleted from the table
        bus.stop()
        bus.start()  # the table is restored from its changelog, the index rebuilt and recounted
        wait_gauges(bus, (2, 1))
    finally:
        bus.stop(signal.SIGKILL)
