"""Run the Faust worker in the foreground (what `stixbus worker` and `stixbus up` start)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import faust

from stixbus import broker_log, worker_state
from stixbus.app import build_app
from stixbus.context import BusContext
from stixbus.files import atomic_write, make_private, private_files
from stixbus.kafka import bulk_restore, local_state
from stixbus.settings import Settings

INSTANCE_ID_FILE = "instance-id"


def instance_id(settings: Settings) -> str:
    """This worker's static group member id: `settings.group_instance_id`, else the one kept in
    <home>/worker/instance-id (generated at first start).  It follows the worker's home, like
    its local table state, so a restarted worker is recognised as the member that died."""
    if settings.group_instance_id:
        return settings.group_instance_id
    path = settings.worker_dir / INSTANCE_ID_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    fresh = f"{settings.app_id}-{uuid.uuid4().hex[:12]}"
    atomic_write(path, (fresh + "\n").encode(), 0o600)
    return fresh


def _log_before_faust(logger: logging.Logger) -> None:
    """Faust configures logging when its Worker starts: until then, this logger writes in the
    same format on its own (to stderr, i.e. the worker log)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
        )
        logger.addHandler(handler)
        logger.propagate = False


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    private_files()  # RocksDB state and logs: owner only (docs/security.md, "Files")
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    make_private(settings.worker_dir)
    if settings.static_membership:
        settings = settings.model_copy(update={"group_instance_id": instance_id(settings)})
    app = build_app(BusContext.from_settings(settings))
    broker_log.install(settings.bootstrap_servers, settings.broker_error_log_seconds)
    worker_state.install(app)
    if settings.store.startswith("rocksdb:"):
        # A reset broker or recreated changelogs leave local state Faust would refuse
        # (ConsistencyError) or trust wrongly: check it first, rebuild when stale.
        changelogs = {t.name: t.changelog_topic.get_topic_name() for t in app.tables.values()}
        _log_before_faust(local_state.log)
        local_state.check(Path(app.conf.tabledir), changelogs, settings)
        bulk_restore.restore(
            Path(app.conf.tabledir),
            changelogs,
            settings,
            settings.bulk_restore_min_records,
            settings.bulk_restore_processes or None,
        )
    worker = faust.Worker(app, loglevel=loglevel)
    # Faust's terminal spinner (on at WARNING and above) sets the ROOT logger to DEBUG so that
    # it spins on every record: every debug call of faust and aiokafka (several per produced
    # record) then builds a LogRecord — 5-6 % of the worker under load (docs/performance.md).
    worker.spinner = None
    worker.execute_from_commandline()
