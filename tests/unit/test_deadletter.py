"""Bounded dead letters (issue #12 finding 11) and the ingest topics' record limit."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

from schemas.envelope import DeadLetter, Reason, Rejection
from stixbus.core.deadletter import HEAD_BYTES, bounded
from stixbus.kafka.topics import RECORD_FRAMING_BYTES, TopicNames
from tests.helpers.paths import example_registry


def _letter(raw: bytes) -> DeadLetter:
    return DeadLetter(
        submission_id="s1",
        publisher="cert",
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
        reasons=[Rejection(reason=Reason.TOO_LARGE, pointer="", message="too big")],
        payload=base64.b64encode(raw).decode(),
        payload_encoding="base64",
    )


def test_a_dead_letter_within_the_limit_is_kept_whole_with_size_and_hash() -> None:
    raw = b"x" * 1000
    letter = bounded(_letter(raw), raw, max_payload_bytes=1000)
    assert not letter.payload_truncated
    assert base64.b64decode(letter.payload) == raw
    assert letter.payload_bytes == 1000
    assert letter.payload_sha256 == hashlib.sha256(raw).hexdigest()


def test_an_oversize_dead_letter_keeps_head_size_and_hash_only() -> None:
    raw = bytes(range(256)) * 50_000  # 12.8 MB, not UTF-8
    letter = bounded(_letter(raw), raw, max_payload_bytes=4 * 1024 * 1024)
    assert letter.payload_truncated and letter.payload_encoding == "base64"
    assert base64.b64decode(letter.payload) == raw[:HEAD_BYTES]
    assert letter.payload_bytes == len(raw)
    assert letter.payload_sha256 == hashlib.sha256(raw).hexdigest()
    assert len(letter.model_dump_json()) < 2 * HEAD_BYTES
    assert json.loads(letter.model_dump_json())["reasons"][0]["reason"] == "too_large"


def test_ingest_topics_take_the_ingest_limit_other_topics_the_record_limit() -> None:
    specs = TopicNames("p").all_specs(
        example_registry(), 2, 16 * 1024 * 1024, ingest_message_bytes=4 * 1024 * 1024
    )
    for spec in specs:
        if ".ingest." in spec.name:
            assert spec.max_message_bytes == 4 * 1024 * 1024 + RECORD_FRAMING_BYTES
        else:
            assert spec.max_message_bytes == 16 * 1024 * 1024
    assert any(".ingest." in s.name for s in specs)
