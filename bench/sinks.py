"""Network sinks: time from publish to presence in each sink, and a 1M-entry regeneration.

    .venv/bin/python -m bench.sinks [--entries 1000000] [--publishes 40] [--no-kafka]

1. regenerate (no broker): `--entries` indicators (40% domains, 30% URLs, 20% IPv4, 10%
   SHA-256) folded into a subscriber's current set, then every format rendered and written
   (RPZ, EDL, Suricata, Zeek, MISP), then one more indicator and the re-render (a change
   re-renders the whole list).  Wall time of each step and the process's peak RSS.
2. latency (real broker at STIXBUS_BOOTSTRAP_SERVERS, as `make bench-sinks` gives): a worker on
   a fresh topic prefix plus `stixbus sinks serve`; `--publishes` CERT indicators one at a
   time, each a new domain; for each sink, the time from `publish` returning to the entry's
   presence: rpz.zone, the zone served by AXFR (TSIG), domains.txt, the HTTPS-side list (GET
   with ETag), Suricata domains.lst, Zeek intel.dat, the MISP event.  p50/p99.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from egress.sinks.subscriber import Safety, SubscriberSink
from schemas.sinks import SubscriberSinks
from schemas.tlp import TLP

REPO_ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int) -> dict[str, Any]:
    kind = n % 10
    if kind < 4:
        pattern = f"[domain-name:value = 'host-{n}.bench{n % 97}.example']"
    elif kind < 7:
        pattern = f"[url:value = 'http://phish-{n}.bench.example/login/{n % 89}']"
    elif kind < 9:
        pattern = f"[ipv4-addr:value = '10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}']"
    else:
        pattern = f"[file:hashes.'SHA-256' = '{uuid.uuid5(uuid.NAMESPACE_DNS, str(n)).hex * 2}']"
    return {
        "type": "indicator",
        "id": f"indicator--{uuid.UUID(int=n + 1)}",
        "created": "2026-11-01T08:00:00.000Z",
        "modified": "2026-11-01T08:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00.000Z",
        "labels": ["bench"],
        "object_marking_refs": [TLP.GREEN.marking_id],
    }


def regenerate(entries: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-sinks-"))
    sink = SubscriberSink(SubscriberSinks(org="isp-one"), folder, Safety(enabled=False))
    base = rss_mb()
    started = time.perf_counter()
    for n in range(entries):
        sink.current.apply(synthetic(n))
    load = time.perf_counter() - started
    now = datetime.now(UTC)
    started = time.perf_counter()
    sink.publish(now)
    first = time.perf_counter() - started
    sink.current.apply(synthetic(entries + 1))
    started = time.perf_counter()
    outcome = sink.publish(now + timedelta(seconds=1))
    again = time.perf_counter() - started
    sizes = {p.name: p.stat().st_size for p in (folder / "isp-one").rglob("*") if p.is_file()}
    result = {
        "entries": entries,
        "fold_seconds": load,
        "render_write_seconds": first,
        "rerender_one_change_seconds": again,
        "files_changed_on_rerender": len(outcome.written),
        "peak_rss_mb": rss_mb(),
        "rss_before_mb": base,
        "rpz_zone_mb": sizes.get("rpz.zone", 0) / 1e6,
    }
    subprocess.run(["rm", "-rf", str(folder)], check=False)
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(publishes: int) -> dict[str, dict[str, float]]:
    import dns.message
    import dns.query
    import dns.tsig
    import dns.zone

    from egress.credentials import add_credential, default_path
    from tests.helpers.bus import free_port, make_bus

    bootstrap = os.environ.get("STIXBUS_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    home = Path(tempfile.mkdtemp(prefix="bench-sinks-bus-"))
    bus = make_bus(bootstrap, home)
    bus.start()
    http_port, dns_port = free_port(), free_port()
    password = add_credential(default_path(home), "isp-one")[1]
    env = {
        **bus.env,
        "STIXBUS_SINKS_ORGS": "isp-one",
        "STIXBUS_SINKS_HTTP_PORT": str(http_port),
        "STIXBUS_SINKS_DNS_PORT": str(dns_port),
        "STIXBUS_SINKS_DEBOUNCE_SECONDS": "0.1",
    }
    log = (home / "sinks.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", "sinks", "serve"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
    )  # fmt: skip
    folder = home / "sinks" / "isp-one"
    key_file = home / "secrets" / "tsig" / "isp-one.key"
    auth = "Basic " + base64.b64encode(f"isp-one:{password}".encode()).decode()
    try:
        deadline = time.monotonic() + 60
        while not (folder / "domains.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        key = dns.tsig.Key("isp-one-rpz.", base64.b64decode(key_file.read_text().strip()))

        def in_file(relative: str, text: Callable[[str], str]) -> Callable[[str], bool]:
            def check(name: str) -> bool:
                try:
                    return text(name) in (folder / relative).read_text()
                except OSError:
                    return False

            return check

        def via_axfr(name: str) -> bool:
            query = dns.message.make_query("isp-one.rpz.stixbus.", "AXFR")
            query.use_tsig({key.name: key}, keyname=key.name)
            zone = dns.zone.Zone("isp-one.rpz.stixbus.")
            dns.query.inbound_xfr("127.0.0.1", zone, query=query, port=dns_port, timeout=5)
            return zone.get_node(name) is not None

        def via_http(name: str) -> bool:
            request = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/lists/isp-one/domains.txt",
                headers={"Authorization": auth},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return f"{name}\n" in response.read().decode()

        checks: dict[str, Callable[[str], bool]] = {
            "rpz.zone": in_file("rpz.zone", lambda n: f"\n{n} IN CNAME ."),
            "rpz AXFR": via_axfr,
            "domains.txt": in_file("domains.txt", lambda n: f"{n}\n"),
            "HTTPS list": via_http,
            "suricata": in_file(
                "suricata/domains.lst", lambda n: base64.b64encode(n.encode()).decode()
            ),
            "zeek": in_file("zeek/intel.dat", lambda n: f"{n}\tIntel::DOMAIN"),
            "misp": lambda n: any(
                n in p.read_text() for p in (folder / "misp").glob("*.json")
            ),
        }
        found: dict[str, list[float]] = {sink: [] for sink in checks}
        for i in range(publishes):
            name = f"bench-{i}-{uuid.uuid4().hex[:6]}.example"
            obj = synthetic(0) | {
                "id": f"indicator--{uuid.uuid4()}",
                "pattern": f"[domain-name:value = '{name}']",
                "confidence": 90,
            }
            bus.publish("cert", obj)
            published = time.monotonic()
            pending = set(checks)
            while pending and time.monotonic() - published < 30:
                for sink in sorted(pending):
                    if checks[sink](name):
                        found[sink].append(time.monotonic() - published)
                        pending.discard(sink)
                time.sleep(0.01)
        return {
            sink: {
                "n": len(values),
                "p50": _percentile(values, 0.5) if values else float("nan"),
                "p99": _percentile(values, 0.99) if values else float("nan"),
                "mean": statistics.fmean(values) if values else float("nan"),
            }
            for sink, values in found.items()
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        bus.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--publishes", type=int, default=40)
    parser.add_argument("--no-kafka", action="store_true")
    args = parser.parse_args()
    print(f"# sinks bench ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)")
    if not args.no_kafka:
        for sink, row in latency(args.publishes).items():
            print(
                f"publish -> {sink:12s} n={row['n']:.0f} p50 {row['p50']:.2f}s "
                f"p99 {row['p99']:.2f}s"
            )
    result = regenerate(args.entries)
    print(
        f"regenerate {result['entries']:,} entries: fold {result['fold_seconds']:.1f}s, "
        f"render+write all formats {result['render_write_seconds']:.1f}s, "
        f"re-render after one change {result['rerender_one_change_seconds']:.1f}s "
        f"({result['files_changed_on_rerender']:.0f} files rewritten), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB (before {result['rss_before_mb']:.0f} MB), "
        f"zone {result['rpz_zone_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
