"""The validation pool (agents/validation_pool.py): heavy checks off the event loop, the fast
path in-process, the time budget, recovery of the work a killed pool was doing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agents.validation_pool import ValidationPool
from schemas.envelope import Reason
from stixbus.core.normalise import NormaliseOutcome
from stixbus.settings import Limits
from tests.helpers.stix_samples import BANK_A, CERT, NOW, REGISTRY, bundle, indicator, new_id, run

TS = "2024-03-01T10:00:00.000Z"


def malware() -> dict[str, Any]:  # not modelled by the fast path: the OASIS validator checks it
    return {"type": "malware", "spec_version": "2.1", "id": new_id("malware"), "created": TS,
            "modified": TS, "name": "Emotet", "is_family": True}  # fmt: skip


def long_pattern(comparisons: int) -> str:
    """Valid, outside the fast parser, and past the grammar's default recursion limit."""
    return "[" + " AND ".join(f"process:pid = {i}" for i in range(comparisons)) + "]"


async def check(pool: ValidationPool, raw: bytes, publisher: Any = CERT) -> NormaliseOutcome:
    return await pool.normalise(
        raw, publisher, REGISTRY, Limits(), submission_id="sub-1", received_at=NOW, published_at=NOW
    )


def test_plain_indicators_stay_in_process_and_heavy_ones_match_the_pure_result() -> None:
    pool = ValidationPool(workers=1, budget_seconds=60, in_flight_per_publisher=1)
    plain = bundle(indicator(), indicator("[ipv4-addr:value = '198.51.100.1']"))
    heavy = bundle(indicator(), malware(), indicator("[process:pid = 4]"))

    async def go() -> tuple[NormaliseOutcome, NormaliseOutcome]:
        try:
            return await check(pool, plain), await check(pool, heavy)
        finally:
            pool.close()

    plain_outcome, heavy_outcome = asyncio.run(go())
    assert pool.stats.heavy == 1
    for raw, outcome in ((plain, plain_outcome), (heavy, heavy_outcome)):
        expected = run(raw)
        assert outcome.receipt == expected.receipt
        assert [r.object for r in outcome.accepted] == [r.object for r in expected.accepted]
    assert heavy_outcome.receipt.accepted == 3


def test_a_long_valid_pattern_is_parsed_in_the_pool_and_refused_with_advice_in_process() -> None:
    raw = bundle(indicator(long_pattern(1200)))
    in_process = run(raw)
    assert [r.reason for r in in_process.rejections] == [Reason.PATTERN_TOO_COMPLEX]
    assert "Split it into several indicators" in in_process.rejections[0].message
    pool = ValidationPool(workers=1, budget_seconds=120, in_flight_per_publisher=1)

    async def go() -> NormaliseOutcome:
        try:
            return await check(pool, raw)
        finally:
            pool.close()

    outcome = asyncio.run(go())
    assert outcome.receipt.accepted == 1, outcome.receipt.rejections


def test_past_the_budget_the_submission_is_rejected_and_the_others_still_get_checked() -> None:
    pool = ValidationPool(workers=2, budget_seconds=3.0, in_flight_per_publisher=1)
    slow = bundle(*(indicator(f"[process:pid = {i} AND process:name = 'x']") for i in range(6000)))
    other = bundle(malware())

    async def go() -> tuple[NormaliseOutcome, NormaliseOutcome, NormaliseOutcome, float]:
        try:
            await pool._started()  # warm: start-up is not part of the budget
            start = time.monotonic()
            timed_out, shared = await asyncio.gather(check(pool, slow), check(pool, other, BANK_A))
            elapsed = time.monotonic() - start
            after = await check(pool, other, BANK_A)
            return timed_out, shared, after, elapsed
        finally:
            pool.close()

    timed_out, shared, after, elapsed = asyncio.run(go())
    assert [r.reason for r in timed_out.rejections] == [Reason.VALIDATION_TIMEOUT]
    assert "3-second budget" in timed_out.rejections[0].message
    assert timed_out.dead_letter is not None and timed_out.receipt.rejected == 1
    assert elapsed < 30  # the budget, a restart and the retry: not the slow bundle's own time
    assert pool.stats.timed_out == 1 and pool.stats.restarts >= 1
    assert shared.receipt.accepted == 1 and after.receipt.accepted == 1
