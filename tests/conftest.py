"""Fixtures and markers only; helpers live in tests/helpers/.

Tests under tests/broker/ are marked `kafka` automatically: they need the real broker that
`make test` starts (deploy/kafka/kafka.sh), and a missing broker fails them, never skips.
Timing-bound modules (SERIAL_MODULES) are marked `serial`.  Every test is independent of the
others (own topic prefix, app id, home and ports), so the rest run in parallel.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.org import Registry
from stixbus.kafka.admin import list_topics
from tests.helpers.bus import BOOTSTRAP, Bus, make_bus
from tests.helpers.paths import example_registry

BROKER_DIR = Path(__file__).parent / "broker"
# Modules whose assertions are bounds in seconds (kill -9 → delivery, failover, receipt delay
# under another org's load, expiry in the resolver): `make test` runs them alone, after the
# rest ran on 2 processes (deploy/test.sh), so a neighbour test's CPU does not eat their margin.
SERIAL_MODULES = frozenset(
    {"test_recovery.py", "test_isolation.py", "test_cluster_failover.py", "test_sinks_e2e.py"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if BROKER_DIR in path.parents:
            item.add_marker(pytest.mark.kafka)
            if path.name in SERIAL_MODULES:
                item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The example org registry (deploy/orgs.yaml)."""
    return example_registry()


@pytest.fixture(scope="session")
def bootstrap() -> str:
    try:
        asyncio.run(asyncio.wait_for(list_topics({"bootstrap_servers": BOOTSTRAP}), 20))
    except Exception as exc:
        pytest.fail(
            f"Kafka broker not reachable at {BOOTSTRAP} ({exc!r}): run the tests with `make test`, "
            "which starts it (deploy/kafka/kafka.sh up)",
            pytrace=False,
        )
    return BOOTSTRAP


@pytest.fixture(scope="module")
def bus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """One worker per test module, on a fresh topic prefix."""
    handle = make_bus(bootstrap, tmp_path_factory.mktemp("bus"))
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture
def fresh_bus(bootstrap: str, tmp_path: Path) -> Iterator[Bus]:
    """A bus the test starts itself (handle.start()) — for kill/restart tests."""
    handle = make_bus(bootstrap, tmp_path)
    yield handle
    handle.stop(signal.SIGKILL)
