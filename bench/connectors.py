"""Connector throughput, end to end to the ingest topic on the real local broker.

    .venv/bin/python -m bench.connectors [--lines 100000] [--events 1000] [--no-doc]

Measures indicators/s for a 100k-line blocklist (parse, canonicalise, mint, batch, publish,
state) and a 1,000-event MISP feed (misp-stix conversion + the same publishing path), each
from an empty state, plus a re-read of the unchanged blocklist.  Submissions stay under the
broker's default 1 MiB record limit.  Appends a "connectors" section to docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from connectors.blocklist import BlocklistConfig
from connectors.misp import MispConfig
from connectors.runner import run_once
from schemas.org import load_registry
from stixbus.kafka.admin import ensure_topics
from stixbus.kafka.topics import TopicNames, TopicSpec
from stixbus.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

CERT = {"name": "National CERT", "uuid": "d6909adb-7068-499b-9d68-dbf814d02486"}


def make_blocklist(path: Path, lines: int) -> None:
    with path.open("w") as out:
        out.write("# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter\n")
        for i in range(lines):
            out.write(
                f'"{i}","2026-11-20 09:{i // 60 % 60:02d}:{i % 60:02d}",'
                f'"http://phish-{i}.bench.example/login/{i % 97}","online","","malware_download",'
                f'"phishing","https://urlhaus.example/url/{i}/","bench"\n'
            )


def make_misp_feed(feed: Path, events: int) -> int:
    feed.mkdir(parents=True, exist_ok=True)
    manifest = {}
    attributes = 0
    types = [
        ("url", "Network activity", lambda n: f"http://misp-{n}.bench.example/verify"),
        ("domain", "Network activity", lambda n: f"misp-{n}.bench.example"),
        ("ip-dst", "Network activity", lambda n: f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"),
        ("md5", "Payload delivery", lambda n: uuid.uuid5(uuid.NAMESPACE_DNS, str(n)).hex),
        ("email-src", "Payload delivery", lambda n: f"phish{n}@bench.example"),
    ]
    for e in range(events):
        eid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-event-{e}"))
        ts = str(1793520000 + e)
        attrs = []
        for j, (kind, category, value) in enumerate(types):
            n = e * len(types) + j
            attrs.append(
                {
                    "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-attr-{n}")),
                    "type": kind,
                    "category": category,
                    "to_ids": True,
                    "value": value(n),
                    "timestamp": ts,
                    "distribution": "5",
                }
            )
        attributes += len(attrs)
        tags = [{"name": "tlp:green" if e % 2 else "tlp:amber"}, {"name": "phishing"}]
        event = {
            "uuid": eid,
            "info": f"Bench event {e}",
            "date": "2026-11-01",
            "timestamp": ts,
            "published": True,
            "analysis": "2",
            "threat_level_id": "2",
            "distribution": "1",
            "Orgc": CERT,
            "Org": CERT,
            "Tag": tags,
            "Attribute": attrs,
        }
        (feed / f"{eid}.json").write_text(json.dumps({"Event": event}))
        manifest[eid] = {"info": event["info"], "timestamp": ts, "Orgc": CERT, "Tag": tags}
    (feed / "manifest.json").write_text(json.dumps(manifest))
    return attributes


async def bench(lines: int, events: int) -> list[tuple[str, int, float, int]]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=prefix, home=Path(tempfile.mkdtemp(prefix="stixbus-bench-")))
    names = TopicNames(prefix)
    registry = load_registry(settings.registry_path)
    await ensure_topics(
        {"bootstrap_servers": settings.bootstrap_servers},
        [TopicSpec(names.ingest(o.id), 4) for o in registry.publishers],
    )
    results: list[tuple[str, int, float, int]] = []
    work = settings.home

    make_blocklist(work / "big.csv", lines)
    blocklist = BlocklistConfig.model_validate(
        {
            "name": "bench-bl",
            "org": "cert",
            "preset": "urlhaus",
            "source": str(work / "big.csv"),
            "labels": ["phishing"],
            "tlp": "green",
            "confidence": 80,
        }
    )
    started = time.perf_counter()
    report = await run_once(blocklist, settings)
    results.append(
        (
            f"blocklist {lines:,} lines (first import)",
            report.published_objects,
            time.perf_counter() - started,
            len(report.submissions),
        )
    )
    started = time.perf_counter()
    again = await run_once(blocklist, settings)
    results.append(
        (
            f"blocklist {lines:,} lines (unchanged re-read)",
            again.unchanged,
            time.perf_counter() - started,
            len(again.submissions),
        )
    )

    make_misp_feed(work / "feed", events)
    import misp_stix_converter  # noqa: F401  (import once, outside the timing: seconds)

    misp = MispConfig(
        name="bench-misp",
        org="cert",
        source=str(work / "feed"),
        include_types=["indicator"],
        confidence=80,
    )
    started = time.perf_counter()
    report = await run_once(misp, settings)
    results.append(
        (
            f"MISP feed {events:,} events (indicators)",
            report.published_objects,
            time.perf_counter() - started,
            len(report.submissions),
        )
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(bench(args.lines, args.events))
    rows = []
    for label, count, seconds, submissions in results:
        rate = count / seconds if seconds else 0.0
        rows.append(f"| {label} | {count:,} | {seconds:.1f} s | {rate:,.0f}/s | {submissions} |")
        print(
            f"{label}: {count:,} indicators in {seconds:.1f}s = {rate:,.0f}/s, "
            f"{submissions} submissions"
        )
    if args.no_doc:
        return
    doc = REPO_ROOT / "docs" / "performance.md"
    if not doc.exists():
        doc.write_text("# Performance\n")
    cpu = f"{platform.machine()}, {os.cpu_count()} cores"
    section = [
        "",
        "## connectors",
        "",
        f"`python -m bench.connectors` on {cpu}, local single-broker Kafka, "
        f"{time.strftime('%Y-%m-%d')}. End to end from the source to acknowledged records on "
        "`stixbus.ingest.cert` (the worker's own throughput is measured elsewhere). Bundles stay "
        "under the broker's default 1 MiB record limit.",
        "",
        "| run | indicators | time | rate | submissions |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    with doc.open("a") as out:
        out.write("\n".join(section))


if __name__ == "__main__":
    main()
