"""TAXII 2.1 inbox: an unmodified taxii2-client pushes as an org; status reflects the receipt.

The inbox runs as in the secured stack: TLS on by default with a certificate signed by the CA
that `deploy/kafka/kafka.sh compose-secrets` makes.  The attacker tests (issue #12 finding 9)
play a member or an outsider against it: plain HTTP, guessed collections, token-id timing,
token guessing, idle and slowloris connections, connection exhaustion, status flooding.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests
from taxii2client.common import TokenAuth
from taxii2client.v21 import Collection, Server

from connectors.inbox import Inbox, InboxConfig, collection_id, run
from connectors.inbox_auth import TokenStore, create_token
from tests.helpers.bus import Bus, free_port
from tests.helpers.connectors import delivered_patterns, sample_indicator, settings_for
from tests.helpers.paths import REPO_ROOT

MEDIA = "application/taxii+json;version=2.1"
IDLE = 4.0
HEADER = 1.5
MAX_CONNECTIONS = 8
STATUS_BYTES = 20_000
ATTEMPTS = 20


@dataclass
class Running:
    base: str
    ca: Path
    port: int
    cert_token: str
    bank_token: str
    bank_b_token: str
    max_body: int
    inbox: Inbox

    def session(self) -> requests.Session:
        s = requests.Session()
        s.verify = str(self.ca)
        return s


@pytest.fixture(scope="module")
def inbox(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("inbox")
    home = tmp / "home"
    made = subprocess.run(
        ["bash", str(REPO_ROOT / "deploy" / "kafka" / "kafka.sh"), "compose-secrets"],
        env={**os.environ, "STIXBUS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    tokens = tmp / "tokens.yaml"
    cert = create_token(tokens, "cert", "test")
    bank = create_token(tokens, "bank-a", "test")
    bank_b = create_token(tokens, "bank-b", "test")
    config = InboxConfig(
        name="inbox",
        tokens_file=tokens,
        port=free_port(),
        max_body_bytes=200_000,
        idle_timeout_seconds=IDLE,
        header_timeout_seconds=HEADER,
        body_timeout_seconds=HEADER,
        max_connections=MAX_CONNECTIONS,
        auth_attempts_per_minute=ATTEMPTS,
        status_max_bytes=STATUS_BYTES,
    )  # tls left at its default
    settings = settings_for(bus).model_copy(update={"home": home})
    served = Inbox(config, settings)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(run(served, stop),), daemon=True
    )
    thread.start()
    base = f"https://127.0.0.1:{config.port}"
    ca = home / "secrets" / "ca.pem"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/taxii2/", timeout=1, verify=str(ca))
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    with pytest.MonkeyPatch.context() as env:
        # requests lets these override a session's `verify` (taxii2-client sets only that)
        env.delenv("REQUESTS_CA_BUNDLE", raising=False)
        env.delenv("CURL_CA_BUNDLE", raising=False)
        yield Running(base, ca, config.port, cert, bank, bank_b, 200_000, served)
    loop.call_soon_threadsafe(stop.set)
    thread.join(15)


def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    token = create_token(path, "cert")
    assert token.split("_", 2)[2] not in path.read_text()
    store = TokenStore(path)
    assert store.org_for(token) == "cert"
    assert store.org_for(token + "x") is None
    assert store.org_for("garbage") is None


def test_taxii2_client_posts_and_status_reflects_receipt(bus: Bus, inbox: Running) -> None:
    server = Server(
        f"{inbox.base}/taxii2/", user="cert", password=inbox.cert_token, verify=str(inbox.ca)
    )
    [root] = server.api_roots
    [collection] = root.collections
    assert collection.id == collection_id("cert") and collection.can_write
    objects = [sample_indicator(i, "inbox") for i in range(3)]
    status = collection.add_objects(
        {"objects": objects}, wait_for_completion=True, poll_interval=1, timeout=60
    )
    assert status.status == "complete", status._raw
    assert status.success_count == 3 and status.failure_count == 0
    assert {s["id"] for s in status.successes} == {o["id"] for o in objects}
    want = {objects[0]["pattern"]}
    assert delivered_patterns(bus, "bank-a", want) == want

    # a token works as an API key too (Authorization: Token …)
    keyed = Collection(
        f"{inbox.base}/taxii2/bus/collections/{collection_id('cert')}/",
        auth=TokenAuth(inbox.cert_token),
        verify=str(inbox.ca),
    )
    bad = dict(sample_indicator(99, "inbox"), pattern="[url:value = ")
    status = keyed.add_objects({"objects": [bad]}, wait_for_completion=True, poll_interval=1)
    assert status.status == "complete" and status.failure_count == 1
    assert "pattern" in status.failures[0]["message"]


def _post(
    inbox: Running, token: str, cid: str, body: bytes, ctype: str = MEDIA
) -> requests.Response:
    resp = inbox.session().post(
        f"{inbox.base}/taxii2/bus/collections/{cid}/objects/",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype, "Accept": MEDIA},
        timeout=30,
    )
    assert resp.headers["Content-Type"].startswith("application/taxii+json")
    return resp


def test_error_statuses(inbox: Running) -> None:
    cert = collection_id("cert")
    body = b'{"objects": []}'
    assert _post(inbox, "sbx_000000000000_nope", cert, body).status_code == 401
    assert _post(inbox, inbox.bank_token, cert, body).status_code == 404  # bank-a as the CERT
    assert _post(inbox, inbox.cert_token, "no-such-collection", body).status_code == 404
    assert _post(inbox, inbox.cert_token, cert, body, "application/json").status_code == 415
    v20 = "application/taxii+json;version=2.0"
    assert _post(inbox, inbox.cert_token, cert, body, v20).status_code == 415
    big = b'{"objects": [' + b",".join([b'{"x": "' + b"y" * 1000 + b'"}'] * 300) + b"]}"
    assert _post(inbox, inbox.cert_token, cert, big).status_code == 413
    assert _post(inbox, inbox.cert_token, cert, b"not json").status_code == 400
    assert _post(inbox, inbox.cert_token, cert, body).status_code == 202


# -- the attacker ----------------------------------------------------------------------------


def test_plain_http_is_refused_tls_is_on_by_default(inbox: Running) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{inbox.port}/taxii2/", timeout=5)
    # and the certificate is the local CA's, valid for 127.0.0.1
    assert inbox.session().get(inbox.base + "/taxii2/", timeout=5).status_code == 401


def test_guessed_collection_answers_like_a_nonexistent_one(inbox: Running) -> None:
    body = b'{"objects": []}'
    others = _post(inbox, inbox.bank_token, collection_id("cert"), body)
    nowhere = _post(inbox, inbox.bank_token, collection_id("no-such-org"), body)
    assert others.status_code == nowhere.status_code == 404
    assert others.content == nowhere.content
    assert b"cert" not in others.content
    session = inbox.session()
    headers = {"Authorization": f"Bearer {inbox.bank_token}", "Accept": MEDIA}
    got = [
        session.get(f"{inbox.base}/taxii2/bus/collections/{cid}/", headers=headers, timeout=10)
        for cid in (collection_id("cert"), collection_id("no-such-org"))
    ]
    assert got[0].status_code == got[1].status_code == 404
    assert got[0].content == got[1].content


def _auth_time(session: requests.Session, inbox: Running, token: str) -> float:
    start = time.perf_counter()
    resp = session.get(
        inbox.base + "/taxii2/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    elapsed = time.perf_counter() - start
    assert resp.status_code == 401
    return elapsed


def test_timing_does_not_tell_whether_a_token_id_exists(inbox: Running) -> None:
    session = inbox.session()
    known_id = inbox.cert_token.split("_")[1]
    _auth_time(session, inbox, "sbx_ffffffffffff_warm")  # connection set up
    known, unknown = [], []
    for _ in range(7):
        known.append(_auth_time(session, inbox, f"sbx_{known_id}_{secrets.token_urlsafe(8)}"))
        unknown.append(_auth_time(session, inbox, f"sbx_{secrets.token_hex(6)}_wrong"))
    ratio = statistics.median(known) / statistics.median(unknown)
    assert 0.5 < ratio < 2.0, (known, unknown)


def test_token_guessing_is_rate_limited_per_token_id(inbox: Running) -> None:
    session = inbox.session()
    victim = inbox.bank_b_token.split("_")[1]
    codes = []
    for _ in range(ATTEMPTS + 5):
        resp = session.get(
            inbox.base + "/taxii2/",
            headers={"Authorization": f"Bearer sbx_{victim}_{secrets.token_urlsafe(8)}"},
            timeout=10,
        )
        codes.append(resp.status_code)
    assert codes[:ATTEMPTS] == [401] * ATTEMPTS
    assert set(codes[ATTEMPTS:]) == {429}, codes
    assert int(resp.headers["Retry-After"]) >= 1
    # other token ids are not locked out
    ok = session.get(
        inbox.base + "/taxii2/",
        headers={"Authorization": f"Bearer {inbox.cert_token}"},
        timeout=10,
    )
    assert ok.status_code == 200


def _tls_socket(inbox: Running) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(inbox.ca))
    raw = socket.create_connection(("127.0.0.1", inbox.port), timeout=30)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_after(sock: ssl.SSLSocket, trickle: bytes = b"") -> float:
    """Seconds until the server closes `sock` (sending `trickle` a byte every 0.3 s)."""
    start = time.monotonic()
    sock.settimeout(0.3)
    sent = 0
    while time.monotonic() - start < 30:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except (ssl.SSLError, OSError):
            return time.monotonic() - start
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - start
            sent += 1
    raise AssertionError("the server never closed the connection")


def test_an_idle_connection_is_closed_after_the_idle_timeout(inbox: Running) -> None:
    with _tls_socket(inbox) as sock:
        waited = _closed_after(sock)
    assert IDLE - 0.5 < waited < IDLE + 3, waited


def test_slowloris_headers_are_cut_at_the_header_timeout(inbox: Running) -> None:
    trickle = b"GET /taxii2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200
    with _tls_socket(inbox) as sock:
        waited = _closed_after(sock, trickle)
    assert waited < IDLE - 0.5, waited  # the header deadline, not the idle one


def test_connection_cap_is_enforced(inbox: Running) -> None:
    held = [_tls_socket(inbox) for _ in range(MAX_CONNECTIONS)]
    try:
        with _tls_socket(inbox) as extra:
            extra.settimeout(10)
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert inbox.session().get(inbox.base + "/taxii2/", timeout=10).status_code == 401


def test_status_store_stays_bounded_under_a_flood(inbox: Running) -> None:
    cert = collection_id("cert")
    first = None
    for i in range(60):
        objects = [sample_indicator(1000 + i * 5 + k, "flood") for k in range(5)]
        body = orjson.dumps({"objects": objects})
        resp = _post(inbox, inbox.cert_token, cert, body)
        assert resp.status_code == 202
        first = first or resp.json()["id"]
    gone = inbox.session().get(
        f"{inbox.base}/taxii2/bus/status/{first}/",
        headers={"Authorization": f"Bearer {inbox.cert_token}", "Accept": MEDIA},
        timeout=10,
    )
    assert gone.status_code == 404  # the oldest went, to stay within the byte bound
    assert inbox.inbox.statuses.bytes <= STATUS_BYTES
