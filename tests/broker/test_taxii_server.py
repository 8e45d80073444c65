"""The subscribers' TAXII 2.1 server end to end: real broker, real worker, real server process,
and an unmodified taxii2-client (docs/taxii.md).

One module bus (worker + server).  The 10k collection is produced straight to bank-c's
delivery topic with a fast producer (the worker would take minutes); the poll-loop, revocation
and restart tests go through the real worker.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from aiokafka import AIOKafkaProducer
from taxii2client.v21 import Collection, as_pages

from stixbus.core.taxii import TAXII_MEDIA
from tests.helpers.bus import Bus, make_bus
from tests.helpers.dedup_samples import indicator, version
from tests.helpers.taxii import TaxiiServer

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def tbus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    handle = make_bus(bootstrap, tmp_path_factory.mktemp("taxii"))
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def server(tbus: Bus) -> Iterator[TaxiiServer]:
    srv = TaxiiServer(tbus)
    for org in ("bank-a", "bank-b", "bank-c"):
        srv.add(org)
    srv.start()
    yield srv
    srv.stop()


def produce_direct(bus: Bus, org: str, count: int) -> list[str]:
    """`count` indicators straight onto `org`'s delivery topic (as the worker writes them)."""
    ids = [f"indicator--{uuid.uuid4()}" for _ in range(count)]

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bus.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for i, oid in enumerate(ids):
                obj = indicator(f"[domain-name:value = 'd{i}-{oid[-12:]}.example']", id=oid)
                await producer.send(bus.names.deliver(org), orjson.dumps(obj), key=oid.encode())
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(go())
    return ids


def client(server: TaxiiServer, org: str, seen_headers: list[dict[str, str]]) -> Collection:
    """An unmodified taxii2-client Collection with Sentinel's parameters (API root URL,
    collection id, username/password); a response hook records the headers."""
    collection = Collection(server.collection(org), user=org, password=server.passwords[org])
    collection._conn.session.hooks["response"].append(
        lambda resp, *a, **k: seen_headers.append(dict(resp.headers))
    )
    return collection


def test_taxii2_client_pages_10k_resumes_and_survives_a_server_restart(
    server: TaxiiServer, tbus: Bus
) -> None:
    ids = produce_direct(tbus, "bank-c", 10_000)
    headers: list[dict[str, str]] = []
    collection = client(server, "bank-c", headers)
    assert collection.can_read and not collection.can_write
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < len(ids) and time.monotonic() < deadline:  # the server reads the topic
        got = []
        pages = as_pages(collection.get_objects, per_request=1000)
        for n, envelope in enumerate(pages):
            got += [o["id"] for o in envelope.get("objects", [])]
            if n == 2 and len(got) == 3000:
                server.stop()  # mid-pagination: the next token must work on a new process
                server.start()
    assert len(got) == len(ids) and set(got) == set(ids), "every object exactly once"
    last = headers[-1]["X-TAXII-Date-Added-Last"]
    assert all(h["Content-Type"] == TAXII_MEDIA for h in headers)

    more = produce_direct(tbus, "bank-c", 1500)
    resumed: list[str] = []
    deadline = time.monotonic() + 20
    while len(resumed) < len(more) and time.monotonic() < deadline:
        for envelope in as_pages(collection.get_objects, per_request=1000, added_after=last):
            resumed += [o["id"] for o in envelope.get("objects", [])]
            last = headers[-1]["X-TAXII-Date-Added-Last"]
        time.sleep(0.3)
    assert sorted(resumed) == sorted(more), "resuming from X-TAXII-Date-Added-Last: only new"


def pages(
    server: TaxiiServer, org: str, path: str = "objects/", **params: str
) -> tuple[list[Obj], str]:
    """Every page of one read (following next); the objects and the last Date-Added-Last."""
    url = server.collection(org) + path
    objects: list[Obj] = []
    query: dict[str, str] = dict(params)
    last = ""
    while True:
        resp = server.get(url, org, params=query)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == TAXII_MEDIA
        body = resp.json()
        objects += body.get("objects", [])
        last = resp.headers["X-TAXII-Date-Added-Last"]
        if not body.get("more"):
            return objects, last
        query = {**params, "next": body["next"]}


def url_pattern() -> str:
    return f"[url:value = 'http://login-{uuid.uuid4().hex[:12]}.example/verify']"


def delivered(bus: Bus, org: str) -> dict[tuple[str, str], Obj]:
    """(id, version) -> object of everything on the org's delivery topic (replays collapse)."""
    out: dict[tuple[str, str], Obj] = {}
    for o in bus.objects(bus.names.deliver(org)):
        out[(str(o["id"]), str(o.get("modified") or o.get("created")))] = o
    return out


def test_poll_loops_while_publishing_through_the_worker_and_restarts(
    server: TaxiiServer, tbus: Bus
) -> None:
    """Elastic-like (added_after from the last header, nothing else) and OpenCTI-like
    (next within a run, added_after between runs) pollers, while the CERT publishes through
    the real worker; both stop and resume, the worker is killed and restarted mid-way."""
    patterns = [url_pattern() for _ in range(60)]
    cursors = {"elastic": "", "opencti": ""}
    seen: dict[str, list[tuple[str, str]]] = {"elastic": [], "opencti": []}

    def poll(kind: str) -> None:
        params = {"limit": "25"}
        if cursors[kind]:
            params["added_after"] = cursors[kind]
        if kind == "opencti":
            objects, last = pages(server, "bank-a", **params)
        else:
            url = server.collection("bank-a") + "objects/"
            resp = server.get(url, "bank-a", params=params)
            assert resp.status_code == 200
            objects, last = resp.json().get("objects", []), resp.headers["X-TAXII-Date-Added-Last"]
        seen[kind] += [(str(o["id"]), str(o.get("modified") or o.get("created"))) for o in objects]
        cursors[kind] = last or cursors[kind]

    for i in range(0, len(patterns), 10):
        batch = [indicator(p) for p in patterns[i : i + 10]]
        tbus.publish("cert", {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": batch})
        if i < 20 or i >= 40:  # the pollers stop for a while, then resume
            poll("elastic")
            poll("opencti")
        if i == 30:
            tbus.stop(signal.SIGKILL)  # the worker dies mid-way and comes back
            tbus.start()
    expected = delivered(tbus, "bank-a")
    wanted = {o["pattern"] for o in expected.values() if o.get("type") == "indicator"}
    deadline = time.monotonic() + 90
    while not set(patterns) <= wanted and time.monotonic() < deadline:
        time.sleep(0.5)
        expected = delivered(tbus, "bank-a")
        wanted = {o["pattern"] for o in expected.values() if o.get("type") == "indicator"}
    missing = [patterns.index(p) for p in set(patterns) - wanted]
    assert not missing, f"never delivered: {sorted(missing)}\n{tbus.log_tail()}"
    ours = {k for k, o in expected.items() if o.get("pattern") in set(patterns)}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        poll("elastic")
        poll("opencti")
        if all(ours <= set(s) for s in seen.values()):
            break
        time.sleep(0.3)
    for kind, got in seen.items():
        assert len(got) == len(set(got)), f"{kind}: a version came twice"
        assert ours <= set(got), f"{kind}: missed {len(ours - set(got))} of {len(ours)}"
        assert set(got) <= set(expected), f"{kind}: got what was never delivered"


def test_revocation_reaches_a_pulling_client_as_a_new_version(
    server: TaxiiServer, tbus: Bus
) -> None:
    obj = indicator(url_pattern())
    tbus.publish("cert", obj)

    def minted() -> list[Obj]:
        objects, _ = pages(
            server, "bank-b", **{"match[type]": "indicator", "match[version]": "all"}
        )
        return [o for o in objects if o.get("pattern") == obj["pattern"]]

    deadline = time.monotonic() + 30
    while not minted() and time.monotonic() < deadline:
        time.sleep(0.3)
    first = minted()
    assert len(first) == 1 and not first[0].get("revoked")
    _, cursor = pages(server, "bank-b")
    tbus.publish("cert", version(obj, "2026-05-02T00:00:00.000Z", revoked=True))
    deadline = time.monotonic() + 30
    while len(minted()) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    versions = minted()
    assert [bool(o.get("revoked")) for o in versions] == [False, True]
    assert len({o["id"] for o in versions}) == 1
    oid = versions[0]["id"]
    resp = server.get(server.collection("bank-b") + f"objects/{oid}/versions/", "bank-b")
    assert resp.json()["versions"] == [o["modified"] for o in versions]
    new, _ = pages(server, "bank-b", added_after=cursor)
    assert [o["revoked"] for o in new if o["id"] == oid] == [True]  # the poller's next poll
    latest = server.get(server.collection("bank-b") + f"objects/{oid}/", "bank-b").json()
    assert [o["revoked"] for o in latest["objects"]] == [True]  # match[version]=last


def first_next(server: TaxiiServer, org: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        body = server.get(server.collection(org) + "objects/?limit=5", org).json()
        if body.get("more") or time.monotonic() > deadline:
            return str(body["next"])
        time.sleep(0.3)


def test_cross_org_bad_credentials_and_tampered_tokens_learn_nothing(
    server: TaxiiServer, tbus: Bus
) -> None:
    """The attacker: bank-a with its own valid credentials probes bank-b's collection."""
    mine, theirs = server.collection("bank-a"), server.collection("bank-b")
    nowhere = server.root + f"collections/{uuid.uuid4()}/"
    probes = {}
    for name, url in {"theirs": theirs, "nowhere": nowhere}.items():
        for suffix in ("", "objects/", "manifest/", "objects/indicator--x/versions/"):
            resp = server.get(url + suffix, "bank-a")
            probes[(name, suffix)] = (resp.status_code, resp.content)
            assert resp.status_code == 404 and resp.headers["Content-Type"] == TAXII_MEDIA
            assert b"bank-b" not in resp.content
    for suffix in ("", "objects/", "manifest/", "objects/indicator--x/versions/"):
        assert probes[("theirs", suffix)] == probes[("nowhere", suffix)]  # indistinguishable
    listed = server.get(server.root + "collections/", "bank-a").json()["collections"]
    assert [c["id"] for c in listed] == [mine.rstrip("/").rsplit("/", 1)[1]]
    post = requests.post(
        theirs + "objects/",
        data=b"{}",
        headers={"Authorization": server.auth("bank-a"), "Content-Type": TAXII_MEDIA},
        timeout=10,
    )
    assert post.status_code == 404
    own_post = requests.post(
        mine + "objects/",
        data=b"{}",
        headers={"Authorization": server.auth("bank-a"), "Content-Type": TAXII_MEDIA},
        timeout=10,
    )
    assert own_post.status_code == 403 and own_post.headers["Content-Type"] == TAXII_MEDIA

    wrong = "Basic " + base64.b64encode(b"bank-b:" + b"x" * 43).decode()
    for authorization in (wrong, None, "Bearer sbt_0_x"):
        for url in (server.base, theirs + "objects/", mine + "objects/"):
            extra = {} if authorization is None else {"Authorization": authorization}
            resp = requests.get(url, headers={"Accept": TAXII_MEDIA, **extra}, timeout=10)
            assert resp.status_code == 401 and resp.headers["Content-Type"] == TAXII_MEDIA
            assert b"bank-" not in resp.content
    assert server.get(mine, "bank-a", Accept="application/json").status_code == 406

    produce_direct(tbus, "bank-a", 30)
    token = first_next(server, "bank-a")
    assert server.get(mine + f"objects/?limit=5&next={token}", "bank-a").status_code == 200
    head, _, mac = token.partition(".")
    forged = {
        "flipped": head[:-2] + ("A" if head[-2] != "A" else "B") + head[-1] + "." + mac,
        "unsigned": head,
        "garbage": "not-a-token",
    }
    for name, bad in forged.items():
        resp = server.get(mine + "objects/", "bank-a", params={"next": bad})
        assert resp.status_code == 400, name
        assert resp.headers["Content-Type"] == TAXII_MEDIA
    # bank-b's own token, used by bank-a on its own collection: another collection's token
    produce_direct(tbus, "bank-b", 30)
    other = first_next(server, "bank-b")
    assert server.get(mine + "objects/", "bank-a", params={"next": other}).status_code == 400


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    key, pem = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}", "-keyout", str(key), "-out", str(pem))  # fmt: skip
    return pem, key


def client_cert(folder: Path, ca: tuple[Path, Path], cn: str) -> tuple[str, str]:
    key, csr, pem = folder / f"{cn}.key", folder / f"{cn}.csr", folder / f"{cn}.pem"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-out", str(pem))  # fmt: skip
    return str(pem), str(key)


def test_tls_and_client_certificates(tbus: Bus, server: TaxiiServer, tmp_path: Path) -> None:
    """TLS signed by the stack's CA; a client certificate from the client CA authenticates
    as the org of its CN (and only reads that org's collection); one from another CA does
    not get in."""
    secrets = tbus.home / "secrets"
    if not (secrets / "ca.pem").exists():
        make_ca(secrets, "ca")
    client_ca = make_ca(tmp_path / "clients", "client-ca")
    rogue_ca = make_ca(tmp_path / "rogue", "rogue-ca")
    tls = TaxiiServer(
        tbus,
        env={"STIXBUS_TAXII_TLS": "true", "STIXBUS_TAXII_CLIENT_CA": str(client_ca[0])},
        passwords=dict(server.passwords),
        ca=str(secrets / "ca.pem"),
    )
    tls.start()
    try:
        cert_a = client_cert(tmp_path / "clients", client_ca, "bank-a")
        rogue_a = client_cert(tmp_path / "rogue", rogue_ca, "bank-a")
        ca = str(secrets / "ca.pem")
        ok = requests.get(tls.collection("bank-a") + "objects/", cert=cert_a, verify=ca,
                          headers={"Accept": TAXII_MEDIA}, timeout=10)  # fmt: skip
        assert ok.status_code == 200, ok.text
        other = requests.get(tls.collection("bank-b"), cert=cert_a, verify=ca, timeout=10)
        assert other.status_code == 404
        assert requests.get(tls.base, verify=ca, timeout=10).status_code == 401
        with pytest.raises(requests.exceptions.ConnectionError):  # refused in the handshake
            requests.get(tls.base, cert=rogue_a, verify=ca, timeout=10)
        assert tls.get(tls.root + "collections/", "bank-b").status_code == 200  # Basic on TLS
    finally:
        tls.stop()
