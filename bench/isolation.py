"""The isolation scenario at length (issue 17; on demand, not CI): org cert floods the bus with
CPU-heavy bundles (patterns only the official grammar checks, objects on the OASIS-validator
path) while org bank-a sends plain indicators; prints bank-a's receipt delays and the
/healthz, /readyz latencies.  Starts its own worker on a fresh topic prefix.

Run (with a broker, e.g. `make up` or deploy/kafka/kafka.sh up in plaintext mode):
  .venv/bin/python -m bench.isolation [--grammar-bundles 4] [--validator-bundles 4]
      [--objects 1500] [--light 120] [--interval 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
from pathlib import Path

from tests.helpers.bus import BOOTSTRAP, make_bus
from tests.helpers.isolation import grammar_bundle, run_scenario, validator_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grammar-bundles", type=int, default=4)
    parser.add_argument("--validator-bundles", type=int, default=4)
    parser.add_argument("--objects", type=int, default=1500, help="objects per heavy bundle")
    parser.add_argument("--light", type=int, default=120, help="plain submissions of bank-a")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--budget", type=float, default=None, help="validation budget (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {"STIXBUS_VALIDATION_BUDGET_SECONDS": str(args.budget)} if args.budget else {}
        bus = make_bus(BOOTSTRAP, Path(home), **env)
        bus.start()
        try:
            heavy = [
                grammar_bundle(args.objects, first=n * args.objects)
                for n in range(args.grammar_bundles)
            ]
            heavy += [validator_bundle(args.objects) for _ in range(args.validator_bundles)]
            report = asyncio.run(
                run_scenario(
                    bus,
                    heavy_org="cert",
                    light_org="bank-a",
                    heavy=heavy,
                    light_count=args.light,
                    light_interval=args.interval,
                    timeout=600,
                )
            )
        finally:
            bus.stop(signal.SIGTERM)
    print(report.summary())
    rejected = [r["rejections"][0]["reason"] for r in report.heavy_receipts if r["rejected"]]
    print(f"heavy receipts rejected: {rejected or 'none'}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
