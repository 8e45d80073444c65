"""Fixtures and markers only; helpers live in tests/helpers/.

Tests under tests/broker/ are marked `kafka` automatically: they need the real broker that
`make test` starts (deploy/kafka/kafka.sh), and a missing broker fails them, never skips.
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kafka)


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
