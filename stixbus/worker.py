"""Run the Faust worker in the foreground (what `stixbus worker` and `stixbus up` start)."""

from __future__ import annotations

import faust

from stixbus.app import build_app
from stixbus.context import BusContext
from stixbus.files import make_private, private_files
from stixbus.settings import Settings


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    private_files()  # RocksDB state and logs: owner only (docs/security.md, "Files")
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    make_private(settings.worker_dir)
    app = build_app(BusContext.from_settings(settings))
    worker = faust.Worker(app, loglevel=loglevel)
    # Faust's terminal spinner (on at WARNING and above) sets the ROOT logger to DEBUG so that
    # it spins on every record: every debug call of faust and aiokafka (several per produced
    # record) then builds a LogRecord — 5-6 % of the worker under load (docs/performance.md).
    worker.spinner = None
    worker.execute_from_commandline()
