"""Dead letters that always fit a record: a too-big input is kept as head bytes + size + sha256.

The normalise stage keeps a rejected payload verbatim.  An input over the ingest limit
(`Limits.message_bytes`) can reach the worker anyway (the limit was lowered after the ingest
topic was created, or a topic was made by hand with a bigger `max.message.bytes`); kept
verbatim, its dead letter could be bigger than any record the broker takes, the send would fail
and the receipt after it would never be written.  `bounded` replaces such a payload with its
first `head_bytes` (base64) plus the whole input's size and SHA-256, which is enough to find the
input at the publisher and prove which one it was.
"""

from __future__ import annotations

import base64
import hashlib

from schemas.envelope import DeadLetter

HEAD_BYTES = 64 * 1024


def bounded(
    letter: DeadLetter, raw: bytes, max_payload_bytes: int, head_bytes: int = HEAD_BYTES
) -> DeadLetter:
    """`letter` unchanged when `raw` is within `max_payload_bytes`, else a truncated copy.

    Every dead letter records the input's size and SHA-256; a truncated one holds only the
    first `head_bytes` of it, base64 (so at most 4/3 * head_bytes of payload text).
    """
    facts = {"payload_bytes": len(raw), "payload_sha256": hashlib.sha256(raw).hexdigest()}
    if len(raw) <= max_payload_bytes:
        return letter.model_copy(update=facts)
    head = base64.b64encode(raw[: max(0, head_bytes)]).decode("ascii")
    return letter.model_copy(
        update={
            **facts,
            "payload": head,
            "payload_encoding": "base64",
            "payload_truncated": True,
        }
    )
