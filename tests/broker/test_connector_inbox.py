"""TAXII 2.1 inbox: an unmodified taxii2-client pushes as an org; status reflects the receipt."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from taxii2client.common import TokenAuth
from taxii2client.v21 import Collection, Server

from connectors.inbox import InboxConfig, TokenStore, collection_id, create_token, serve
from tests.helpers.bus import Bus, free_port
from tests.helpers.connectors import delivered_patterns, sample_indicator, settings_for

MEDIA = "application/taxii+json;version=2.1"


@dataclass
class Running:
    base: str
    cert_token: str
    bank_token: str
    max_body: int


@pytest.fixture(scope="module")
def inbox(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("inbox")
    tokens = tmp / "tokens.yaml"
    cert = create_token(tokens, "cert", "test")
    bank = create_token(tokens, "bank-a", "test")
    config = InboxConfig(name="inbox", tokens_file=tokens, port=free_port(), max_body_bytes=200_000)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(config, settings_for(bus), stop),), daemon=True
    )
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/taxii2/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    yield Running(base, cert, bank, 200_000)
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
    server = Server(f"{inbox.base}/taxii2/", user="cert", password=inbox.cert_token)
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
    )
    bad = dict(sample_indicator(99, "inbox"), pattern="[url:value = ")
    status = keyed.add_objects({"objects": [bad]}, wait_for_completion=True, poll_interval=1)
    assert status.status == "complete" and status.failure_count == 1
    assert "pattern" in status.failures[0]["message"]


def _post(inbox: Running, token: str, cid: str, body: bytes, ctype: str = MEDIA) -> int:
    resp = requests.post(
        f"{inbox.base}/taxii2/bus/collections/{cid}/objects/",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype, "Accept": MEDIA},
        timeout=30,
    )
    assert resp.headers["Content-Type"].startswith("application/taxii+json")
    return resp.status_code


def test_error_statuses(inbox: Running) -> None:
    cert = collection_id("cert")
    body = b'{"objects": []}'
    assert _post(inbox, "sbx_000000000000_nope", cert, body) == 401
    assert _post(inbox, inbox.bank_token, cert, body) == 403  # bank-a posting as the CERT
    assert _post(inbox, inbox.cert_token, "no-such-collection", body) == 404
    assert _post(inbox, inbox.cert_token, cert, body, "application/json") == 415
    assert _post(inbox, inbox.cert_token, cert, body, "application/taxii+json;version=2.0") == 415
    big = b'{"objects": [' + b",".join([b'{"x": "' + b"y" * 1000 + b'"}'] * 300) + b"]}"
    assert _post(inbox, inbox.cert_token, cert, big) == 413
    assert _post(inbox, inbox.cert_token, cert, b"not json") == 400
    assert _post(inbox, inbox.cert_token, cert, body) == 202
