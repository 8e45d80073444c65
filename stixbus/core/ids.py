"""Deterministic ids and STIX timestamps: the bus's one UUIDv5 fast path and time helpers (pure).

`uuid5` gives the same text as `str(uuid.uuid5(namespace, name))` (tested) without building
UUID objects: the version (5) and variant bits are set on the hex digits of the SHA-1 digest
directly.  It runs once per indicator and per subscriber on the hot path.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache

# RFC 4122 variant bits over the first hex digit of the clock sequence: 10xx.
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}

_last_namespace: tuple[uuid.UUID | None, bytes] = (None, b"")


def _namespace_bytes(namespace: uuid.UUID) -> bytes:
    """namespace.bytes, remembered for the last namespace (the bus has one)."""
    global _last_namespace
    last, last_bytes = _last_namespace
    if namespace is last:
        return last_bytes
    _last_namespace = (namespace, namespace.bytes)
    return _last_namespace[1]


def _format(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def uuid5(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, about 3x faster."""
    return _format(hashlib.sha1(_namespace_bytes(namespace) + name.encode("utf-8")).hexdigest())


class Uuid5Prefix:
    """`id_type + uuid5(namespace, prefix + suffix)` for one prefix and many suffixes: the
    namespace and prefix bytes are prepared once (e.g. one minted id per subscriber)."""

    __slots__ = ("id_type", "prefix")

    def __init__(self, namespace: uuid.UUID, prefix: str, id_type: str = "") -> None:
        self.prefix = _namespace_bytes(namespace) + prefix.encode("utf-8")
        self.id_type = id_type

    def __call__(self, suffix: str) -> str:
        h = hashlib.sha1(self.prefix + suffix.encode("utf-8")).hexdigest()
        return f"{self.id_type}{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch, exact (a float timestamp would round)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def stix_time(moment: datetime) -> str:
    """STIX 2.1 timestamp with millisecond precision (truncated), always UTC ('Z')."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=65536)
def parse_time(text: str) -> datetime:
    """An ISO 8601 / STIX timestamp ('T' or ' ' separator, 'Z' or offset); naive means UTC.
    Raises ValueError on anything else."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
