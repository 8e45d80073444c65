"""Handling at ingest (issue 12, findings 5, 6, 7 and 12): TLP labels count, every accepted object
carries its effective TLP, standard TLP ids cannot be redefined, forged x_stixbus_* is stripped."""

from __future__ import annotations

from typing import Any

import pytest
from stix2validator import ValidationOptions, validate_instance

from schemas.tlp import TLP
from stixbus.core.normalise.handling import label_tlp, standard_tlp_problem
from tests.helpers.stix_samples import CERT, TLP_GREEN_1, TS, bundle, indicator, new_id, run

OPTIONS = ValidationOptions(version="2.1")


def accepted_one(obj: dict[str, Any]) -> tuple[Any, list[str]]:
    outcome = run(bundle(obj))
    assert outcome.receipt.rejected == 0, outcome.receipt.rejections
    (record,) = outcome.accepted
    return record, list(outcome.receipt.warnings)


@pytest.mark.parametrize("label", ["tlp:red", "TLP:RED", "Tlp:Red"])
def test_a_tlp_label_alone_counts(label: str) -> None:
    record, warnings = accepted_one(indicator(labels=[label, "phishing"]))
    assert record.tlp is TLP.RED and not record.tlp_inherited
    assert record.object["object_marking_refs"] == [TLP.RED.marking_id]
    assert any("only as label" in w for w in warnings)


@pytest.mark.parametrize(
    ("label", "level"),
    [("tlp:white", TLP.CLEAR), ("tlp:clear", TLP.CLEAR), ("tlp:amber+strict", TLP.AMBER_STRICT)],
)
def test_tlp_1_and_2_names(label: str, level: TLP) -> None:
    assert label_tlp({"labels": [label]}) is level


def test_unknown_tlp_labels_are_ignored() -> None:
    assert label_tlp({"labels": ["tlp:ex:chr", "phishing"]}) is None


def test_the_stricter_of_marking_and_label_applies_with_a_warning() -> None:
    obj = indicator(labels=["tlp:amber"], object_marking_refs=[TLP.GREEN.marking_id])
    record, warnings = accepted_one(obj)
    assert record.tlp is TLP.AMBER
    assert record.object["object_marking_refs"] == [TLP.AMBER.marking_id]
    assert any("stricter" in w and "make them agree" in w for w in warnings)


def test_a_weaker_label_does_not_lower_the_marking() -> None:
    obj = indicator(labels=["tlp:green"], object_marking_refs=[TLP.RED.marking_id])
    record, _ = accepted_one(obj)
    assert record.tlp is TLP.RED and record.object["object_marking_refs"] == [TLP.RED.marking_id]


def test_an_unmarked_forwarded_object_carries_the_default_tlp() -> None:
    sighting = {
        "type": "sighting",
        "spec_version": "2.1",
        "id": new_id("sighting"),
        "created": TS,
        "modified": TS,
        "sighting_of_ref": new_id("indicator"),
    }
    record, _ = accepted_one(sighting)
    assert record.tlp is CERT.default_tlp and record.tlp_inherited
    assert record.object["object_marking_refs"] == [CERT.default_tlp.marking_id]
    assert not validate_instance(record.object, OPTIONS).errors


def test_a_tlp1_marking_of_the_right_level_is_kept_as_is() -> None:
    record, _ = accepted_one(indicator(object_marking_refs=[TLP_GREEN_1]))
    assert record.object["object_marking_refs"] == [TLP_GREEN_1]


def test_forged_bus_properties_are_stripped_with_a_warning() -> None:
    forged: dict[str, Any] = {
        "x_stixbus_sources": [{"created_by_ref": "identity--x"}],
        "x_other": 1,
    }
    record, warnings = accepted_one(indicator(**forged))
    assert "x_stixbus_sources" not in record.object and record.object["x_other"] == 1
    assert any("x_stixbus_sources" in w and "bus only" in w for w in warnings)


def test_a_redefined_standard_tlp_id_is_rejected() -> None:
    fake_green = {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP.GREEN.marking_id,
        "created": TS,
        "definition_type": "statement",
        "definition": {"statement": "anything goes"},
    }
    outcome = run(bundle(fake_green, indicator(object_marking_refs=[TLP.GREEN.marking_id])))
    reasons = {r.reason.value for r in outcome.receipt.rejections}
    assert "redefined_tlp" in reasons


def test_the_standard_definitions_are_accepted() -> None:
    standard_green_2 = {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP.GREEN.marking_id,
        "created": "2022-10-01T00:00:00.000Z",
        "name": "TLP:GREEN",
        "extensions": {
            "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
                "extension_type": "property-extension",
                "tlp_2_0": "green",
            }
        },
    }
    standard_green_1 = {
        "type": "marking-definition",
        "id": TLP_GREEN_1,
        "created": "2017-01-20T00:00:00.000Z",
        "definition_type": "tlp",
        "definition": {"tlp": "green"},
    }
    assert standard_tlp_problem(standard_green_2) is None
    assert standard_tlp_problem(standard_green_1) is None
    assert standard_tlp_problem({**standard_green_1, "definition": {"tlp": "red"}})


def test_record_timestamps_outside_the_skew_window_fall_back_to_receive_time() -> None:
    from datetime import UTC, datetime, timedelta

    from stixbus.core.normalise.handling import trusted_publish_time

    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    skew = timedelta(minutes=5)
    assert trusted_publish_time(now - timedelta(minutes=4), now, skew) == now - timedelta(minutes=4)
    assert trusted_publish_time(now - timedelta(days=400), now, skew) == now
    assert trusted_publish_time(now + timedelta(hours=1), now, skew) == now


STATEMENT_ID = "marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168"
STATEMENT: dict[str, Any] = {
    "type": "marking-definition",
    "spec_version": "2.1",
    "id": STATEMENT_ID,
    "created": "2017-06-01T00:00:00.000Z",
    "definition_type": "statement",
    "definition": {"statement": "Copyright 2015-2026, The MITRE Corporation."},
}


def test_a_remembered_marking_is_known_in_a_later_submission() -> None:
    from stixbus.core.normalise import normalise_submission
    from stixbus.settings import Limits
    from tests.helpers.stix_samples import NOW, REGISTRY

    marked = indicator(object_marking_refs=[TLP.GREEN.marking_id, STATEMENT_ID])
    forgotten = run(bundle(marked))
    assert [r.reason.value for r in forgotten.receipt.rejections] == ["unknown_marking"]
    remembered = normalise_submission(
        bundle(marked),
        CERT,
        REGISTRY,
        Limits(),
        submission_id="s2",
        received_at=NOW,
        published_at=NOW,
        remembered_markings=frozenset({STATEMENT_ID}),
    )
    assert remembered.receipt.rejected == 0
    assert any("reach no subscriber" in w for w in remembered.receipt.warnings)


def test_marking_memory_is_per_publisher_and_forgets_tombstones() -> None:
    from stixbus.core.marking_memory import MarkingMemory, marking_key

    memory = MarkingMemory()
    memory.apply([(marking_key("cert", STATEMENT_ID), b"1"), (b"garbage", b"1")])
    assert memory.known("cert") == {STATEMENT_ID} and memory.known("bank-a") == frozenset()
    memory.apply([(marking_key("cert", STATEMENT_ID), None)])
    assert memory.known("cert") == frozenset()
