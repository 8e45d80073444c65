"""End to end: the whole pipeline on the real broker, against a raw aiokafka passthrough.

Run (a broker must be up: `make up`, or deploy/kafka/kafka.sh with your ports):
    .venv/bin/python -m bench.e2e [--count 20000] [--runs 3]          # throughput (make bench-e2e)
    .venv/bin/python -m bench.e2e --rate 500 --duration 20              # latency at one subscriber
    .venv/bin/python -m bench.e2e --count 5000 --workers 2              # 1 vs 2 workers, one group

Throughput, per run (median of `--runs`):
1. a fresh bus (own topic prefix, a `stixbus worker` on rocksdb) with the example agreements;
2. a seeded feed of `--count` indicators (40 % IPv4, 30 % domains, 30 % URLs; 30 % duplicates:
   a third exact copies, a third re-reports under a new id, a third variants: upper case,
   trailing dot, `/32`, `hxxp://`), published as the CERT with a fast producer: a third in
   bundles of 1000, a third of 100, a third of 1;
3. the expected deliveries come from the pure core (normalise + route_step over the same feed);
   the bench waits until every subscriber's deliver topic holds them and checks that nothing is
   missing and nothing is extra (distinct minted ids and versions, companions aside);
4. a raw aiokafka consume→produce passthrough reads the same ingest records and writes as many
   records of the same sizes as the bus wrote (every topic but the inputs), on the same broker.
Reported: input indicators/s, delivered objects/s, worker CPU s and peak RSS, broker RSS,
records written per input, passthrough input/s and the ratio bus/passthrough.

Security: the broker mode of the environment (STIXBUS_SECURITY_PROTOCOL, STIXBUS_SASL_USERNAME /
STIXBUS_SASL_PASSWORD or STIXBUS_CREDENTIALS_FILE, STIXBUS_SSL_CAFILE: the client env file that
deploy/kafka/kafka.sh writes) applies to the worker, the feed producer and the passthrough alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from dotenv import dotenv_values

from schemas.agreement import load_agreements
from schemas.envelope import SUBMISSION_HEADER
from schemas.org import load_registry
from stixbus.cli.agreements import apply_file
from stixbus.core.decay import DecayPolicy
from stixbus.core.decide import AgreementIndex
from stixbus.core.deliveries import RouteConfig
from stixbus.core.normalise import normalise_submission
from stixbus.core.route_step import route_step
from stixbus.kafka.admin import ensure_topics
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.topics import TopicNames, TopicSpec
from stixbus.settings import Limits, Settings, client_env_file, load_settings
from stixbus.warninglists import guard_index

REPO_ROOT = Path(__file__).resolve().parent.parent
ORGS = REPO_ROOT / "deploy" / "orgs.yaml"
AGREEMENTS = REPO_ROOT / "deploy" / "agreements.yaml"
COMPANION_TYPES = frozenset({"identity", "marking-definition"})
BUNDLE_SIZES = (1000, 100, 1)
PARTITIONS = 4


# --- the feed ---------------------------------------------------------------------------------


def _indicator(pattern: str, ident: str | None = None) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": ident or f"indicator--{uuid.UUID(int=random.getrandbits(128), version=4)}",
        "created": "2026-05-01T00:00:00.000Z",
        "modified": "2026-05-01T00:00:00.000Z",
        "name": "bench e2e",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-05-01T00:00:00Z",
        "valid_until": "2036-05-01T00:00:00Z",
        "labels": ["malicious-activity"],
        "confidence": 70,
    }


def _value(kind: str, n: int, salt: str) -> str:
    # Not on the guard's warninglists (RFC 1918/6761 ranges and example.* are: the guard would
    # hold them back from most subscribers, docs/feedback.md); expected_deliveries applies the
    # worker's guard too, so a value that is listed after all is still counted right.
    if kind == "ipv4":
        return f"91.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    if kind == "domain":
        return f"h{n}-{salt}.bench-e2e-malware.net"
    return f"http://h{n}-{salt}.bench-e2e-phish.org/p/{n}"


def _pattern(kind: str, value: str) -> str:
    obj = {"ipv4": "ipv4-addr", "domain": "domain-name", "url": "url"}[kind]
    return f"[{obj}:value = '{value}']"


def _variant(kind: str, value: str, rng: random.Random) -> str:
    if kind == "ipv4":
        return value + "/32"
    if kind == "domain":
        return value.upper() if rng.random() < 0.5 else value + "."
    return value.replace("http://", "hxxp://") if rng.random() < 0.5 else value.upper()


def make_feed(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` indicators, 30 % of them duplicates of an earlier one in three flavours."""
    rng = random.Random(seed)
    random.seed(seed)  # the ids
    salt = f"{seed:x}"
    feed: list[dict[str, Any]] = []
    uniques: list[tuple[str, str, dict[str, Any]]] = []
    for n in range(count):
        if uniques and rng.random() < 0.30:
            kind, value, original = rng.choice(uniques)
            flavour = rng.randrange(3)
            if flavour == 0:
                feed.append(original)  # exact copy
            elif flavour == 1:
                feed.append(_indicator(_pattern(kind, value)))  # re-report: new id
            else:
                feed.append(_indicator(_pattern(kind, _variant(kind, value, rng))))
            continue
        draw = rng.random()
        kind = "ipv4" if draw < 0.4 else "domain" if draw < 0.7 else "url"
        value = _value(kind, n, salt)
        obj = _indicator(_pattern(kind, value))
        uniques.append((kind, value, obj))
        feed.append(obj)
    return feed


def bundles(feed: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A third of the feed in bundles of 1000, a third of 100, the rest one per message."""
    out: list[list[dict[str, Any]]] = []
    third = len(feed) // 3
    parts = (feed[:third], feed[third : 2 * third], feed[2 * third :])
    for part, size in zip(parts, BUNDLE_SIZES, strict=True):
        out.extend(part[i : i + size] for i in range(0, len(part), size))
    return [b for b in out if b]


def bundle_bytes(objects: list[dict[str, Any]]) -> bytes:
    ident = f"bundle--{uuid.UUID(int=random.getrandbits(128), version=4)}"
    return orjson.dumps({"type": "bundle", "id": ident, "objects": objects})


# --- expected deliveries (the pure core over the same feed) ------------------------------------


@dataclass
class Expected:
    ids: dict[str, set[str]] = field(default_factory=dict)  # subscriber -> minted ids
    versions: dict[str, int] = field(default_factory=dict)  # subscriber -> delivered versions
    keys: int = 0


def expected_deliveries(payloads: list[bytes]) -> Expected:
    registry = load_registry(ORGS).with_pseudonym_key(bytes(range(32)))
    index = AgreementIndex(load_agreements(AGREEMENTS), registry)
    states: dict[str, Any] = {}
    out = Expected()
    now = datetime.now(UTC)
    settings = Settings()
    guard = guard_index(registry, settings.guard_lists) if settings.guard_enabled else None
    decay = DecayPolicy.from_seconds(settings.decay_lifetimes)
    config = RouteConfig(settings.confidence_step, guard=guard, decay=decay)
    publisher = registry.get("cert")
    for payload in payloads:
        outcome = normalise_submission(
            payload, publisher, registry, Limits(), submission_id=str(uuid.uuid4()),
            received_at=now, published_at=now,
        )  # fmt: skip
        for record in outcome.accepted:
            step = route_step(record, states.get(record.key), registry, index, now, config, 3600)
            if step.state is not None:
                states[record.key] = step.state
            for d in step.deliveries:
                out.ids.setdefault(d.subscriber, set()).add(d.stix_object["id"])
                out.versions[d.subscriber] = out.versions.get(d.subscriber, 0) + 1
    out.keys = len(states)
    return out


# --- processes ---------------------------------------------------------------------------------


def proc_tree(root: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == root or int(entry) == root:  # process group
                pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def broker_pid(settings: Settings) -> int | None:
    path = settings.home / "kafka" / "kafka.pid"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Bus:
    settings: Settings
    names: TopicNames
    env: dict[str, str]
    home: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.procs[0] if self.procs else None

    @property
    def conn(self) -> dict[str, Any]:
        return client_kwargs(self.settings)


async def _create_topics(settings: Settings, names: TopicNames, app_id: str) -> None:
    registry = load_registry(ORGS)
    specs = names.all_specs(registry, PARTITIONS, settings.max_record_bytes, app_id=app_id)
    await ensure_topics(client_kwargs(settings), specs)


def start_bus(
    base: Settings, extra_env: dict[str, str], root: Path = REPO_ROOT, workers: int = 1
) -> Bus:
    """A fresh bus and `workers` `stixbus worker` processes in one consumer group (each with
    its own home, web port and static member id)."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    app_id = f"{prefix}-worker"
    env = {
        # The broker's connection settings (deploy/kafka/kafka.sh's client.env: SASL_SSL, CA,
        # credentials) reach the workers, whose own STIXBUS_HOME has no such file.
        **{k: v for k, v in dotenv_values(client_env_file()).items() if v is not None},
        **os.environ,
        "STIXBUS_TOPIC_PREFIX": prefix,
        "STIXBUS_APP_ID": app_id,
        "STIXBUS_HOME": str(home),
        "STIXBUS_WEB_PORT": os.environ.get("BENCH_WEB_PORT", "19112"),
        "STIXBUS_PARTITIONS": str(PARTITIONS),
        "STIXBUS_STORE": "rocksdb://",
        # --worker-root: another checkout's code (e.g. a baseline) runs the worker
        "PYTHONPATH": str(root),
        **extra_env,
    }
    settings = base.model_copy(update={"topic_prefix": prefix, "app_id": app_id})
    names = TopicNames(prefix)
    asyncio.run(_create_topics(settings, names, app_id))
    apply_file(settings, AGREEMENTS, True)
    bus = Bus(settings, names, env, home)
    for n in range(workers):
        port = str(int(env["STIXBUS_WEB_PORT"]) + n)
        worker_env = {**env, "STIXBUS_WEB_PORT": port}
        if workers > 1:
            worker_env["STIXBUS_HOME"] = str(home / f"w{n}")
            worker_env["STIXBUS_GROUP_INSTANCE_ID"] = f"{prefix}-w{n}"
        log = (home / f"worker{n if n else ''}.log").open("ab")
        bus.ports.append(port)
        bus.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "stixbus.cli.main", "worker", "--loglevel", "warning"],
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                start_new_session=True,
            )
        )
    for proc, port in zip(bus.procs, bus.ports, strict=True):
        _wait_ready(bus, proc, port)
    return bus


def _wait_ready(bus: Bus, proc: subprocess.Popen[bytes], port: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/readyz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited: see {bus.home / 'worker.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if orjson.loads(resp.read()).get("ready"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"worker not ready after {timeout}s: see {bus.home / 'worker.log'}")


def stop_bus(bus: Bus, keep: bool) -> None:
    for proc in bus.procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in bus.procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    if not keep:
        asyncio.run(_delete_topics(bus.conn, (bus.names.prefix, bus.settings.app_id)))
        shutil.rmtree(bus.home, ignore_errors=True)


async def _delete_topics(conn: dict[str, Any], prefixes: tuple[str, ...]) -> None:
    admin = AIOKafkaAdminClient(**conn)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


# --- publish and collect -----------------------------------------------------------------------


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    metadata = await consumer._client.fetch_all_metadata()
    found = metadata.partitions_for_topic(topic)
    if not found:
        raise SystemExit(f"topic {topic} does not exist")
    return [TopicPartition(topic, p) for p in sorted(found)]


async def publish_all(conn: dict[str, Any], topic: str, payloads: list[bytes]) -> float:
    """Send every payload (not waiting for each ack); returns the wall time of the first send."""
    producer = AIOKafkaProducer(
        **conn, acks="all", linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20
    )
    await producer.start()
    try:
        started = time.time()
        futures = []
        for payload in payloads:
            sid = str(uuid.uuid4()).encode()
            futures.append(
                await producer.send(topic, payload, key=sid, headers=[(SUBMISSION_HEADER, sid)])
            )
        await asyncio.gather(*futures)
        return started
    finally:
        await producer.stop()


# `drain`: the bus is idle once none of its topics got a record for this long (at most MAX).
DRAIN_QUIET_S = 3.0
DRAIN_MAX_S = 120.0


@dataclass
class Collected:
    ids: dict[str, set[str]] = field(default_factory=dict)
    versions: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    records: int = 0
    companions: int = 0
    last_ts_ms: int = 0


async def collect(
    conn: dict[str, Any], topics: dict[str, str], expected: Expected, stall: float
) -> Collected:
    """Read the deliver topics until every expected delivery arrived or nothing came for `stall`."""
    got = Collected()
    consumer = AIOKafkaConsumer(
        **conn, enable_auto_commit=False, fetch_max_wait_ms=50,
        max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [tp for t in topics.values() for tp in await partitions(consumer, t)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        org_of = {t: org for org, t in topics.items()}
        last_new = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, messages in batch.items():
                org = org_of[tp.topic]
                for m in messages:
                    got.records += 1
                    got.last_ts_ms = max(got.last_ts_ms, m.timestamp)
                    obj = orjson.loads(m.value)
                    if obj.get("type") in COMPANION_TYPES:
                        got.companions += 1
                        continue
                    got.ids.setdefault(org, set()).add(obj["id"])
                    got.versions.setdefault(org, set()).add((obj["id"], obj.get("modified", "")))
                if messages:
                    last_new = time.monotonic()
            if (
                all(len(got.versions.get(org, ())) >= n for org, n in expected.versions.items())
                or time.monotonic() - last_new > stall
            ):
                return got
    finally:
        await consumer.stop()


async def end_offsets_total(
    conn: dict[str, Any], prefixes: tuple[str, ...], inputs: tuple[str, ...]
) -> int:
    """Records the bus has written so far (sum of end offsets over its topics but the inputs)."""
    consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.startswith(prefixes) and t not in inputs]
        tps = [tp for t in topics for tp in await partitions(consumer, t)]
        return sum((await consumer.end_offsets(tps)).values()) if tps else 0
    finally:
        await consumer.stop()


def drain(
    conn: dict[str, Any], prefixes: tuple[str, ...], inputs: tuple[str, ...], cpu: Any
) -> tuple[float, float]:
    """Wait until the bus stops writing (the feedback stages lag the deliveries): no new record
    on any of its topics for DRAIN_QUIET_S.  Returns (CPU s, s after the last delivery) at the
    last write seen, so the quiet wait's idle CPU is not counted."""
    t0 = time.monotonic()
    last_total, last_cpu, last_at = -1, cpu(), t0
    while time.monotonic() - last_at < DRAIN_QUIET_S and time.monotonic() - t0 < DRAIN_MAX_S:
        total = asyncio.run(end_offsets_total(conn, prefixes, inputs))
        if total != last_total:
            last_total, last_cpu, last_at = total, cpu(), time.monotonic()
        time.sleep(0.5)
    return last_cpu, last_at - t0


async def written_records(
    conn: dict[str, Any], prefixes: tuple[str, ...], inputs: tuple[str, ...]
) -> dict[str, tuple[int, float]]:
    """Per topic the bus wrote to: (records, mean record size in bytes, key + value)."""
    consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False)
    await consumer.start()
    out: dict[str, tuple[int, float]] = {}
    try:
        topics = [t for t in await consumer.topics() if t.startswith(prefixes) and t not in inputs]
        for topic in topics:
            tps = await partitions(consumer, topic)
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            count = sum(ends[tp] - starts[tp] for tp in tps)
            if not count:
                continue
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            sizes: list[int] = []
            while len(sizes) < min(count, 2000):
                batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
                if not batch:
                    break
                for messages in batch.values():
                    sizes.extend(len(m.value or b"") + len(m.key or b"") for m in messages)
            out[topic] = (count, statistics.fmean(sizes) if sizes else 0.0)
    finally:
        await consumer.stop()
    return out


# --- the passthrough ---------------------------------------------------------------------------


async def passthrough(conn: dict[str, Any], source: str, inputs: int, sizes: list[int]) -> float:
    """consume `source` → produce len(sizes) records (those sizes) spread over the inputs, with
    aiokafka defaults (acks=all), acks gathered per fetched batch.  Returns input indicators/s."""
    out_topic = f"benchpt{uuid.uuid4().hex[:8]}"
    await ensure_topics(conn, [TopicSpec(out_topic, PARTITIONS)])
    consumer = AIOKafkaConsumer(
        **conn, enable_auto_commit=False, max_partition_fetch_bytes=16 << 20
    )
    producer = AIOKafkaProducer(**conn, acks="all", max_request_size=8 << 20)
    await consumer.start()
    await producer.start()
    try:
        tps = await partitions(consumer, source)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values = {s: b"x" * s for s in set(sizes)}
        seen = written = 0
        started = time.perf_counter()
        while seen < inputs:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            acks = []
            for messages in batch.values():
                for m in messages:
                    seen += len(orjson.loads(m.value)["objects"])
                    target = len(sizes) * seen // inputs
                    while written < target:
                        key = b"%d" % written
                        acks.append(await producer.send(out_topic, values[sizes[written]], key=key))
                        written += 1
            await asyncio.gather(*acks)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
        await _delete_topics(conn, (out_topic,))
    return inputs / elapsed


# --- one throughput run ------------------------------------------------------------------------


@dataclass
class RunResult:
    input_per_s: float
    delivered_per_s: float
    worker_cpu_s: float  # up to the last delivery
    drained_cpu_s: float  # up to the bus's last write (feedback stages included)
    drain_s: float  # how long after the last delivery the bus still wrote
    worker_rss_mib: float
    broker_rss_mib: float
    records_per_input: float
    passthrough_per_s: float
    missing: int
    extra: int

    @property
    def ratio(self) -> float:
        return self.input_per_s / self.passthrough_per_s


def throughput_run(
    base: Settings,
    payloads: list[bytes],
    count: int,
    expected: Expected,
    args: argparse.Namespace,
    workers: int = 1,
) -> RunResult:
    bus = start_bus(base, {}, args.worker_root, workers)
    try:
        assert bus.proc is not None

        def tree() -> list[int]:
            return [pid for proc in bus.procs for pid in proc_tree(proc.pid)]

        pids = tree()
        cpu0 = cpu_seconds(pids)
        deliver = {org: bus.names.deliver(org) for org in expected.versions}

        async def go() -> tuple[float, Collected]:
            collector = asyncio.create_task(collect(bus.conn, deliver, expected, args.stall))
            started = await publish_all(bus.conn, bus.names.ingest("cert"), payloads)
            return started, await collector

        profiler = None
        if args.profile:
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                 "-p", str(bus.proc.pid), "-f", "raw",
                 "-o", args.profile, "-d", str(args.profile_seconds)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        started, got = asyncio.run(go())
        if profiler is not None:
            profiler.wait()
        cpu = cpu_seconds(tree()) - cpu0
        inputs = (*(bus.names.ingest(o.id) for o in load_registry(ORGS).publishers),
                  bus.names.agreements)  # fmt: skip
        prefixes = (bus.names.prefix, bus.settings.app_id)
        drained_cpu, drain_s = drain(bus.conn, prefixes, inputs, lambda: cpu_seconds(tree()))
        worker_rss = max(rss_mib(p, "VmHWM") for p in pids)
        bpid = broker_pid(base)
        broker_rss = rss_mib(bpid) if bpid else 0.0
        elapsed = max(got.last_ts_ms / 1000 - started, 1e-3)
        missing = extra = 0
        for org, ids in expected.ids.items():
            have = got.ids.get(org, set())
            missing += len(ids - have)
            extra += len(have - ids)
            versions = len(got.versions.get(org, ()))
            missing += max(0, expected.versions[org] - versions - len(ids - have))
            extra += max(0, versions - expected.versions[org] - len(have - ids))
        extra += sum(len(v) for o, v in got.ids.items() if o not in expected.ids)
        written = asyncio.run(written_records(bus.conn, prefixes, inputs))
        total = sum(n for n, _ in written.values())
        sizes: list[int] = []
        for n, mean in written.values():
            sizes.extend([max(1, round(mean))] * n)
        random.Random(1).shuffle(sizes)
        if args.verbose:
            for topic, (n, mean) in sorted(written.items()):
                print(f"    {topic}: {n:,} records, mean {mean:,.0f} B")
        pt = asyncio.run(passthrough(bus.conn, bus.names.ingest("cert"), count, sizes))
        return RunResult(
            input_per_s=count / elapsed,
            delivered_per_s=got.records / elapsed,
            worker_cpu_s=cpu,
            drained_cpu_s=drained_cpu - cpu0,
            drain_s=drain_s,
            worker_rss_mib=worker_rss,
            broker_rss_mib=broker_rss,
            records_per_input=total / count,
            passthrough_per_s=pt,
            missing=missing,
            extra=extra,
        )
    finally:
        stop_bus(bus, args.keep)


def _report(results: list[RunResult], count: int, security: str, title: str) -> None:
    def med(f: str) -> float:
        return statistics.median(getattr(r, f) if f != "ratio" else r.ratio for r in results)

    print(f"\nmedian of {len(results)} ({count:,} inputs, {security}, {title}):")
    rows = [
        ("input indicators/s", f"{med('input_per_s'):,.0f}"),
        ("delivered objects/s", f"{med('delivered_per_s'):,.0f}"),
        ("worker CPU s (all workers)", f"{med('worker_cpu_s'):.1f}"),
        ("worker CPU ms / input", f"{1000 * med('worker_cpu_s') / count:.2f}"),
        ("worker CPU s, drained", f"{med('drained_cpu_s'):.1f}"),
        ("worker CPU ms / input, drained", f"{1000 * med('drained_cpu_s') / count:.2f}"),
        ("drain after last delivery s", f"{med('drain_s'):.1f}"),
        ("worker peak RSS MiB (largest)", f"{med('worker_rss_mib'):,.0f}"),
        ("broker RSS MiB", f"{med('broker_rss_mib'):,.0f}"),
        ("records written / input", f"{med('records_per_input'):.2f}"),
        ("aiokafka passthrough input/s", f"{med('passthrough_per_s'):,.0f}"),
        ("ratio bus / passthrough", f"{med('ratio'):.2f}"),
        ("missing / extra deliveries", f"{max(r.missing for r in results)} / "
                                       f"{max(r.extra for r in results)}"),
    ]  # fmt: skip
    for label, value in rows:
        print(f"  {label:32s} {value:>12s}")


def throughput(args: argparse.Namespace) -> int:
    base = load_settings()
    feed = make_feed(args.count, args.seed)
    random.seed(args.seed + 1)
    payloads = [bundle_bytes(b) for b in bundles(feed)]
    expected = expected_deliveries(payloads)
    print(f"feed: {args.count:,} indicators in {len(payloads):,} messages, {expected.keys:,} keys; "
          f"expected {sum(expected.versions.values()):,} deliveries to "
          f"{len(expected.versions)} subscribers; security {base.security_protocol}")  # fmt: skip
    # --workers N > 1: every run is a 1-worker run then an N-worker run (alternating, same
    # session), so the scaling is read off the same conditions.
    counts = [1, args.workers] if args.workers > 1 else [1]
    results: dict[int, list[RunResult]] = {n: [] for n in counts}
    for run in range(args.runs):
        for n in counts:
            r = throughput_run(base, payloads, args.count, expected, args, n)
            results[n].append(r)
            print(f"  run {run + 1}, {n} worker{'s' if n > 1 else ''} (load "
                  f"{os.getloadavg()[0]:.2f}): {r.input_per_s:,.0f} input/s, "
                  f"{r.delivered_per_s:,.0f} delivered obj/s, worker {r.worker_cpu_s:.1f} CPU s "
                  f"({r.drained_cpu_s:.1f} drained, +{r.drain_s:.1f} s), "
                  f"RSS {r.worker_rss_mib:,.0f} MiB, broker RSS {r.broker_rss_mib:,.0f} MiB, "
                  f"{r.records_per_input:.2f} records/input; passthrough "
                  f"{r.passthrough_per_s:,.0f} input/s, ratio {r.ratio:.2f}; missing "
                  f"{r.missing}, extra {r.extra}", flush=True)  # fmt: skip
    for n in counts:
        _report(results[n], args.count, base.security_protocol, f"{n} worker(s)")
    if len(counts) > 1:
        one = statistics.median(r.input_per_s for r in results[1])
        many = statistics.median(r.input_per_s for r in results[args.workers])
        print(f"\n  {args.workers} workers / 1 worker (input/s, medians): {many / one:.2f}")
    every = [r for rs in results.values() for r in rs]
    return 1 if any(r.missing or r.extra for r in every) else 0


# --- latency -----------------------------------------------------------------------------------


def latency(args: argparse.Namespace) -> int:
    base = load_settings()
    bus = start_bus(base, {}, args.worker_root)
    try:
        total = int(args.rate * args.duration)
        # not example.org: the false-positive guard holds listed names back (bench feed note)
        patterns = [_pattern("domain", f"lat{n}-{uuid.uuid4().hex[:6]}.bench-e2e-malware.net")
                    for n in range(total)]  # fmt: skip
        sent: dict[str, float] = {}
        topic = bus.names.deliver(args.subscriber)

        async def go() -> list[float]:
            received: dict[str, float] = {}
            consumer = AIOKafkaConsumer(**bus.conn, enable_auto_commit=False, fetch_max_wait_ms=5)
            await consumer.start()
            tps = await partitions(consumer, topic)
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)

            async def read() -> None:
                while len(received) < total:
                    batch = await consumer.getmany(timeout_ms=100)
                    now = time.time()
                    for messages in batch.values():
                        for m in messages:
                            obj = orjson.loads(m.value)
                            if obj.get("type") == "indicator":
                                received.setdefault(obj["pattern"], now)

            reader = asyncio.create_task(read())
            producer = AIOKafkaProducer(**bus.conn, acks="all")
            await producer.start()
            try:
                t0 = time.monotonic()
                for n, pattern in enumerate(patterns):
                    delay = t0 + n / args.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sid = str(uuid.uuid4()).encode()
                    sent[pattern] = time.time()
                    await producer.send(
                        bus.names.ingest("cert"), orjson.dumps(_indicator(pattern)), key=sid,
                        headers=[(SUBMISSION_HEADER, sid)],
                    )  # fmt: skip
                await producer.flush()
                await asyncio.wait_for(reader, timeout=args.stall + args.duration)
            except TimeoutError:
                pass
            finally:
                await producer.stop()
                await consumer.stop()
            return sorted(received[p] - sent[p] for p in received if p in sent)

        lat = asyncio.run(go())
    finally:
        stop_bus(bus, args.keep)
    if not lat:
        print("no deliveries arrived")
        return 1

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    print(
        f"latency publish→delivery at {args.subscriber}, {args.rate:g} indicators/s for "
        f"{args.duration:g} s ({len(lat):,} of {total:,} arrived, {base.security_protocol}):"
    )
    print(f"  p50 {pct(0.50):.1f} ms  p95 {pct(0.95):.1f} ms  p99 {pct(0.99):.1f} ms  "
          f"max {lat[-1] * 1000:.1f} ms")  # fmt: skip
    return 0 if len(lat) == total else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="input indicators per run")
    parser.add_argument("--runs", type=int, default=3, help="runs (the median is reported)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--stall", type=float, default=60, help="give up after this many s idle")
    parser.add_argument("--rate", type=float, help="latency mode: indicators per second")
    parser.add_argument("--duration", type=float, default=20, help="latency mode: seconds")
    parser.add_argument("--subscriber", default="bank-a", help="latency mode: who is measured")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="N > 1: each run also runs N workers in one group (own homes, ports, member ids) "
        "and prints 1- vs N-worker throughput",
    )  # fmt: skip
    parser.add_argument("--profile", help="py-spy raw profile of the worker to this file")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument(
        "--worker-root", type=Path, default=REPO_ROOT,
        help="run the worker from this checkout (e.g. `git archive <base> | tar -x -C DIR`)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep topics and worker home")
    parser.add_argument("--verbose", action="store_true", help="records per topic")
    args = parser.parse_args()
    sys.exit(latency(args) if args.rate else throughput(args))


if __name__ == "__main__":
    main()
