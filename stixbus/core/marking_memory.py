"""Which marking-definitions each publisher has published (pure; folded from a topic).

A statement marking (a copyright, a licence) is published once and referenced by everything
that follows: MITRE ATT&CK's per-object files reference one marking-definition 20,000 times.
Ingest writes each accepted marking-definition to the compacted `markings` topic (key =
`<publisher>|<marking id>`), every worker replays it (agents/markings.py), and normalise treats
the publisher's remembered markings as known.  Per publisher: a member never learns, through an
"unknown marking" rejection or its absence, which markings other members defined.
"""

from __future__ import annotations

from collections.abc import Iterable

SEPARATOR = "|"


def marking_key(publisher: str, marking_id: str) -> bytes:
    return f"{publisher}{SEPARATOR}{marking_id}".encode()


class MarkingMemory:
    def __init__(self) -> None:
        self._by_publisher: dict[str, frozenset[str]] = {}

    def known(self, publisher: str) -> frozenset[str]:
        return self._by_publisher.get(publisher, frozenset())

    def remember(self, publisher: str, marking_ids: Iterable[str]) -> None:
        new = frozenset(marking_ids)
        if not new <= self.known(publisher):
            self._by_publisher[publisher] = self.known(publisher) | new

    def apply(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Fold topic records in; a key without the separator is skipped, a tombstone forgets."""
        for key, value in records:
            publisher, sep, marking_id = (
                (key or b"").decode("utf-8", "replace").partition(SEPARATOR)
            )
            if not sep or not marking_id.startswith("marking-definition--"):
                continue
            if value:
                self.remember(publisher, (marking_id,))
            else:
                self._by_publisher[publisher] = self.known(publisher) - {marking_id}
