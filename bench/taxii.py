"""The subscribers' TAXII server: paging throughput, page latency under load, memory.

Run: .venv/bin/python -m bench.taxii [--objects 100000] [--clients 10] [--limit 1000]
(`make bench-taxii`; needs a broker: `make up`, or STIXBUS_BOOTSTRAP_SERVERS + plaintext).

1. `--objects` indicators produced straight to one subscriber's delivery topic (fresh prefix),
   then a real `stixbus taxii serve` process started on it.
2. one client pages the whole collection following `next`: pages/s, objects/s.
3. `--clients` clients page it at once: p50/p99 latency of one page.
4. the server's RSS (VmRSS, VmHWM) after all that.
Targets (issue 14): >= 20k objects/s per page stream, p99 <= 100 ms at 10 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import requests
from aiokafka import AIOKafkaProducer

from egress.credentials import add_credential
from schemas.org import load_registry
from stixbus.core.taxii import TAXII_MEDIA, collection_id
from stixbus.kafka.admin import ensure_topics
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings

ORG = "bank-b"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for i in range(count):
            oid = f"indicator--{uuid.uuid4()}"
            obj = {
                "type": "indicator",
                "spec_version": "2.1",
                "id": oid,
                "created": "2026-05-01T00:00:00.000Z",
                "modified": "2026-05-01T00:00:00.000Z",
                "name": "Phishing page",
                "pattern": f"[url:value = 'http://login-{i}.example.com/verify']",
                "pattern_type": "stix",
                "valid_from": "2026-05-01T00:00:00Z",
                "indicator_types": ["malicious-activity"],
                "labels": ["phishing"],
                "confidence": 80,
            }
            await producer.send(topic, orjson.dumps(obj), key=oid.encode())
        await producer.flush()
    finally:
        await producer.stop()


def page_through(url: str, auth: str, limit: int, latencies: list[float] | None) -> int:
    session = requests.Session()
    headers = {"Accept": TAXII_MEDIA, "Authorization": auth}
    params: dict[str, str] = {"limit": str(limit)}
    count = 0
    while True:
        started = time.perf_counter()
        resp = session.get(url, params=params, headers=headers, timeout=60)
        if latencies is not None:
            latencies.append(time.perf_counter() - started)  # the page is in: parse after
        body = orjson.loads(resp.content)
        assert resp.status_code == 200, resp.text
        count += len(body.get("objects", []))
        if not body.get("more"):
            return count
        params = {"limit": str(limit), "next": body["next"]}


def one_client(url: str, auth: str, limit: int) -> list[float]:
    latencies: list[float] = []
    page_through(url, auth, limit, latencies)
    return latencies


def rss(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: v.strip()
        for k, _, v in (line.partition(":") for line in lines)
        if k in ("VmRSS", "VmHWM")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    settings = Settings()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    registry = load_registry(settings.registry_path)
    conn = {"bootstrap_servers": settings.bootstrap_servers}
    asyncio.run(ensure_topics(conn, names.all_specs(registry, 1)))
    started = time.perf_counter()
    asyncio.run(produce(settings.bootstrap_servers, names.deliver(ORG), args.objects))
    print(f"produced {args.objects} objects in {time.perf_counter() - started:.1f}s")

    home = Path(tempfile.mkdtemp(prefix="stixbus-bench-taxii-"))
    creds = home / "creds.yaml"
    _, password = add_credential(creds, ORG)
    port = free_port()
    env = {
        **os.environ,
        "STIXBUS_HOME": str(home),
        "STIXBUS_TOPIC_PREFIX": prefix,
        "STIXBUS_TAXII_PORT": str(port),
        "STIXBUS_TAXII_TLS": "false",
        "STIXBUS_TAXII_CREDENTIALS_FILE": str(creds),
        "STIXBUS_TAXII_PAGE_MAX": str(max(args.limit, 1000)),
        "STIXBUS_TAXII_REQUESTS_PER_MINUTE": "1000000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", "taxii", "serve"],
        env=env,
        stdout=(home / "taxii.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    auth = "Basic " + base64.b64encode(f"{ORG}:{password}".encode()).decode()
    url = f"http://127.0.0.1:{port}/taxii2/feeds/collections/{collection_id(prefix, ORG)}/objects/"
    try:
        started = time.perf_counter()
        while True:
            try:
                resp = requests.get(
                    url + "?limit=1", headers={"Accept": TAXII_MEDIA, "Authorization": auth}
                )
                if resp.status_code == 200 and resp.json().get("objects"):
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                raise SystemExit((home / "taxii.log").read_text()[-3000:])
            time.sleep(0.2)
        print(f"server loaded the collection in {time.perf_counter() - started:.1f}s "
              f"(process start included)")  # fmt: skip
        time.sleep(1.5)  # past the settle allowance: every object visible
        latencies: list[float] = []
        started = time.perf_counter()
        count = page_through(url, auth, args.limit, latencies)
        took = time.perf_counter() - started
        print(
            f"1 client: {count} objects in {len(latencies)} pages, {took:.2f}s: "
            f"{len(latencies) / took:.1f} pages/s, {count / took:,.0f} objects/s"
        )
        assert count == args.objects, f"paged {count} of {args.objects}"
        # One process per client (threads would measure this script's GIL, not the server).
        started = time.perf_counter()
        with multiprocessing.Pool(args.clients) as pool:
            runs = pool.starmap(one_client, [(url, auth, args.limit)] * args.clients)
        took = time.perf_counter() - started
        loaded = [latency for run in runs for latency in run]
        ordered = sorted(loaded)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(
            f"{args.clients} clients: {len(loaded)} pages in {took:.2f}s; page latency "
            f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms; {args.clients * count / took:,.0f} objects/s total"
        )
        print(f"server memory: {rss(proc.pid)}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


if __name__ == "__main__":
    main()
