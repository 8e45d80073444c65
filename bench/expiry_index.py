"""Memory of the bare expiry index (tracemalloc) after a rebuild of `--keys` keys, for several
fractions of them due within its 1-day horizon (the rest 300 days out).

Run: .venv/bin/python -m bench.expiry_index [--keys 1000000] [--root /tmp/base-checkout]
(`--root`: import stixbus from another checkout, e.g. a baseline whose index held every key).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 12, 2, tzinfo=UTC)
BATCH = 5000  # agents/expiry.py's REBUILD_BATCH


def measure(index_type: Any, keys: int, fraction: float) -> tuple[int, int]:
    """(bytes traced, peak) once `keys` entries were rebuilt in batches, as agents/expiry.py."""
    every = round(1 / fraction)
    tracemalloc.start()
    index = index_type()
    if len(inspect.signature(index.begin_rebuild).parameters) == 1:
        index.begin_rebuild(T0)
    else:  # an index without a horizon
        index.begin_rebuild()
    batch: list[tuple[bytes, datetime]] = []
    for n in range(keys):
        key = b"%08x" % n + b"-d9c3-5a4c-b8a4-9480fc87f119"
        due = n % every == 0
        batch.append((key, T0 + timedelta(seconds=n % 86000 if due else 300 * 86400)))
        if len(batch) >= BATCH:
            index.rebuilt(batch)
            batch = []
    index.rebuilt(batch)
    index.end_rebuild()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--root", help="import stixbus from this checkout")
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, args.root)
    index_type = importlib.import_module("stixbus.core.expiry").ExpiryIndex
    for fraction in (1.0, 0.1, 0.01):
        current, peak = measure(index_type, args.keys, fraction)
        print(f"{args.root or 'this checkout'}: {fraction:.0%} due within a day: "
              f"{current / 2**20:.1f} MiB traced ({current / args.keys:.0f} B per table key), "
              f"peak {peak / 2**20:.1f} MiB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
