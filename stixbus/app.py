"""The Faust application: one worker process runs every stixbus agent.

Topics carry raw bytes; the agents validate with the pydantic models in `schemas/`, so Faust's
own codecs and Records are not part of any contract.
"""

from __future__ import annotations

import faust

from stixbus.context import BusContext
from stixbus.kafka import _compat
from stixbus.kafka.acls import WORKER
from stixbus.kafka.config import faust_kwargs

# The only HTTP paths the worker serves: liveness, readiness (agents/health.py), Prometheus
# (agents/observe.py).
WEB_PATHS = ("/healthz", "/readyz", "/metrics")


def build_app(ctx: BusContext) -> faust.App:
    settings = ctx.settings
    brokers = ";".join(f"kafka://{hp}" for hp in settings.bootstrap_servers.split(","))
    app = faust.App(
        settings.app_id,
        broker=brokers,
        store=settings.store,
        datadir=str(settings.worker_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # Other workers of the group keep warm copies of each table partition (docs/operations.md,
        # "Cluster"): a failover then needs only the changelog tail, not a cold rebuild.
        table_standby_replicas=settings.table_standby_replicas,
        key_serializer="raw",
        value_serializer="raw",
        web_port=settings.web_port,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        # No Faust views: /table/<name>/<key>/ would serve the dedup state (every publisher's
        # versions, TLP:RED included) and /router the members, with no credentials.  What is
        # left besides ours is refused by _compat.serve_only below (docs/security.md).
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        # The worker creates no topics (its principal has no CREATE right): the operator's
        # `stixbus topics` / `stixbus up` creates them, the table changelogs included.  No
        # leader topic either (no agent or timer runs on_leader).
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # at-least-once: exactly_once has open duplicate/crash bugs in faust-streaming 0.15.
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Receipts of big rejected bundles and dead letters of 4 MiB submissions exceed Kafka's
        # 1 MiB default; topics are created with the same limit (stixbus/kafka/admin.py).
        producer_max_request_size=settings.max_record_bytes,
        consumer_max_fetch_size=settings.max_record_bytes,
        # Crash recovery in seconds (docs/runbook.md): a static member (group.instance.id) that
        # restarts within its session gets its partitions back without waiting for the dead
        # member to time out; the session bounds the failover to other workers when it does not.
        consumer_group_instance_id=(
            settings.group_instance_id if settings.static_membership else None
        ),
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        # Batching, set deliberately (stixbus/settings.py, docs/performance.md).
        producer_linger=settings.producer_linger_ms / 1000,
        producer_max_batch_size=settings.producer_batch_bytes,
        producer_compression_type=(
            None if settings.producer_compression == "none" else settings.producer_compression
        ),
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        **faust_kwargs(settings, WORKER),  # SASL/TLS credentials (docs/security.md)
    )
    # Imported here: agents register themselves on the app they are given.
    from agents import register_all

    register_all(app, ctx)
    _compat.serve_only(app, WEB_PATHS)
    _compat.leave_group_when_stopped()
    _compat.seek_uncommitted_to_start()
    _compat.commit_only_what_was_processed()
    _compat.livelock_check_skips_unpositioned()
    return app
