"""The one UUIDv5 fast path and the STIX time helpers (stixbus/core/ids.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from stixbus.core.ids import Uuid5Prefix, parse_time, stix_time, uuid5

NAMES = ["", "a", "key/bank-b", "é" * 40, "[url:value = 'http://x.example/']", "\x00\uffff"]


def test_fast_path_equals_uuid_uuid5() -> None:
    namespaces = [uuid.NAMESPACE_URL, uuid.uuid4(), uuid.uuid4()]
    for _ in range(2):  # switching namespaces must not reuse the remembered bytes
        for namespace in namespaces:
            for name in [*NAMES, *(str(uuid.uuid4()) for _ in range(200))]:
                assert uuid5(namespace, name) == str(uuid.uuid5(namespace, name))


def test_prefixed_fast_path_equals_uuid_uuid5() -> None:
    namespace = uuid.uuid4()
    ids = Uuid5Prefix(namespace, "key/", "indicator--")
    for name in NAMES:
        assert ids(name) == f"indicator--{uuid.uuid5(namespace, 'key/' + name)}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T09:41:06.123Z", datetime(2026, 11, 20, 9, 41, 6, 123000, tzinfo=UTC)),
        ("2026-11-20 09:41:06", datetime(2026, 11, 20, 9, 41, 6, tzinfo=UTC)),  # naive: UTC
        (
            " 2026-11-20T10:41:06+01:00 ",
            datetime(2026, 11, 20, 10, 41, 6, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected and parse_time(text).tzinfo is not None


def test_stix_time_is_utc_milliseconds_truncated() -> None:
    moment = datetime(2026, 11, 20, 10, 41, 6, 123999, tzinfo=timezone(timedelta(hours=1)))
    assert stix_time(moment) == "2026-11-20T09:41:06.123Z"
    assert stix_time(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"
    assert parse_time(stix_time(moment)) == moment.replace(microsecond=123000)
    with pytest.raises(ValueError):
        parse_time("not-a-date")
