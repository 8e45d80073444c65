"""The TAXII read side (stixbus/core/taxii.py): order, horizon, paging, replays, tokens."""

from __future__ import annotations

import base64

import orjson
import pytest

from stixbus.core.taxii import (
    BadRequest,
    CollectionIndex,
    Filters,
    collection_id,
    parse_filters,
    parse_limit,
    sign_next,
    taxii_time,
    verify_next,
)

KEY = b"k" * 32
FAR = 10**13  # a horizon past every record


def obj(n: int, modified: str = "2026-05-01T00:00:00.000Z", **extra: object) -> bytes:
    return orjson.dumps(
        {"type": "indicator", "id": f"indicator--{n:08d}", "modified": modified, **extra}
    )


def filled(times: list[int]) -> CollectionIndex:
    index = CollectionIndex()
    for offset, ms in enumerate(times):
        index.add(0, offset, ms, obj(offset), None)
    return index


def ids(page) -> list[str]:
    return [e.id for e in page.entries]


def test_collection_ids_are_uuid4_form_stable_and_distinct() -> None:
    a = collection_id("stixbus", "bank-a")
    assert a == collection_id("stixbus", "bank-a") != collection_id("stixbus", "bank-b")
    assert a[14] == "4" and a[19] in "89ab"


def test_a_producer_batch_larger_than_the_page_reaches_an_added_after_poller() -> None:
    # Every record of one producer batch has the same LogAppendTime; a poller that pages only
    # by added_after = X-TAXII-Date-Added-Last (Elastic's TAXII input) must still get them all.
    index = filled([1000] * 30 + [1001] * 5)
    got: list[str] = []
    filters = Filters()
    for _ in range(10):
        page = index.page(filters, 25, FAR)
        got += ids(page)
        _, last = page.header_times(filters, None)
        filters = parse_filters({"added_after": last})
    assert sorted(got) == sorted(ids(index.page(Filters(), 100, FAR))) and len(got) == 35


def test_date_added_is_unique_and_increasing_per_partition() -> None:
    index = filled([1000, 1000, 999, 1001])  # one batch, then the broker's clock stepped back
    assert [e.pos[0] for e in index.entries] == [1_000_000, 1_000_001, 1_000_002, 1_001_000]
    assert taxii_time(1_000_001) == "1970-01-01T00:00:01.000001Z"


def test_pages_never_end_inside_an_instant_the_next_record_shares() -> None:
    index = CollectionIndex()  # two partitions' batches can share an instant
    index.add(0, 0, 999, obj(0), None)
    index.add(0, 1, 1000, obj(1), None)
    index.add(1, 0, 1000, obj(2), None)
    index.add(0, 2, 1001, obj(3), None)
    page = index.page(Filters(), 2, FAR)
    assert ids(page) == ["indicator--00000000"] and page.more
    _, last = page.header_times(Filters(), None)
    rest = index.page(parse_filters({"added_after": last}), 10, FAR)
    assert ids(rest) == ["indicator--00000001", "indicator--00000002", "indicator--00000003"]


def test_a_page_that_is_one_instant_is_kept_whole() -> None:
    index = CollectionIndex()
    for partition in range(5):
        index.add(partition, 0, 5, obj(partition), None)
    page = index.page(Filters(), 2, FAR)
    assert len(page.entries) == 2 and page.more


def test_horizon_hides_records_not_yet_final() -> None:
    index = filled([1000, 1001, 1002])
    assert [e.pos[0] for e in index.page(Filters(), 10, 1_002_000).entries] == [
        1_000_000,
        1_001_000,
    ]


def test_a_late_record_from_another_partition_sorts_by_time() -> None:
    index = CollectionIndex()
    index.add(0, 0, 1000, obj(1), None)
    index.add(0, 1, 1005, obj(2), None)
    index.add(1, 0, 1002, obj(3), None)
    assert [e.pos for e in index.entries] == [
        (1_000_000, 0, 0),
        (1_002_000, 1, 0),
        (1_005_000, 0, 1),
    ]


def test_replays_collapse_and_new_versions_do_not() -> None:
    index = CollectionIndex()
    assert index.add(0, 0, 1000, obj(1), None)
    assert not index.add(0, 1, 2000, obj(1), None)  # byte-identical (id, modified): a replay
    assert index.add(0, 2, 3000, obj(1, "2026-05-02T00:00:00.000Z", revoked=True), None)
    every = index.page(Filters(versions=frozenset({"all"})), 10, FAR)
    assert [e.pos[0] for e in every.entries] == [1_000_000, 3_000_000]
    last = index.page(Filters(), 10, FAR)
    assert [orjson.loads(e.raw).get("revoked") for e in last.entries] == [True]
    first = index.page(Filters(versions=frozenset({"first"})), 10, FAR)
    assert [e.pos[0] for e in first.entries] == [1_000_000]


def test_filters_by_type_id_and_version() -> None:
    index = CollectionIndex()
    index.add(
        0,
        0,
        1,
        orjson.dumps({"type": "identity", "id": "identity--1", "created": "2026-01-01T00:00:00Z"}),
        None,
    )
    index.add(0, 1, 2, obj(7), None)
    assert ids(index.page(parse_filters({"match[type]": "identity"}), 10, FAR)) == ["identity--1"]
    assert ids(index.page(parse_filters({"match[id]": "indicator--00000007"}), 10, FAR)) == [
        "indicator--00000007"
    ]
    exact = parse_filters({"match[version]": "2026-05-01T00:00:00.000Z"})
    assert ids(index.page(exact, 10, FAR)) == ["indicator--00000007"]
    assert ids(index.page(parse_filters({"match[spec_version]": "2.0"}), 10, FAR)) == []


def test_next_tokens_are_signed_and_bound_to_a_collection() -> None:
    filters = parse_filters({"match[type]": "indicator", "added_after": "2026-01-01T00:00:00Z"})
    token = sign_next(KEY, "col-a", (5, 0, 9), filters)
    assert verify_next(KEY, token, "col-a") == ((5, 0, 9), filters)
    head, _, mac = token.partition(".")
    payload = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    payload["p"] = [0, 0, 0]  # the attacker rewinds the position, keeping the signature
    forged = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
    for bad in (forged + "." + mac, head, "", "x.y", token + "A"):
        with pytest.raises(BadRequest):
            verify_next(KEY, bad, "col-a")
    with pytest.raises(BadRequest):
        verify_next(KEY, token, "col-b")
    with pytest.raises(BadRequest):
        verify_next(b"other" * 8, token, "col-a")


def test_bad_parameters_are_bad_requests() -> None:
    with pytest.raises(BadRequest):
        parse_filters({"added_after": "yesterday"})
    with pytest.raises(BadRequest):
        parse_filters({"match[version]": "soon"})
    with pytest.raises(BadRequest):
        parse_limit("0", 10, 100)
    assert parse_limit("5000", 10, 100) == 100 and parse_limit(None, 10, 100) == 10


def test_empty_pages_stand_where_the_client_stands() -> None:
    index = filled([1000])
    after = parse_filters({"added_after": taxii_time(1_000_000)})
    page = index.page(after, 10, FAR)
    assert page.entries == [] and page.header_times(after, None) == (taxii_time(1_000_000),) * 2
