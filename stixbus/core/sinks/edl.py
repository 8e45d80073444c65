"""External dynamic lists for firewalls and proxies (pure): one entry a line, no comments.

    ipv4.txt     192.0.2.0/24, 198.51.100.7 ...  (CIDR-aggregated)
    ipv6.txt     2001:db8::/48 ...               (CIDR-aggregated)
    domains.txt  evil.example ...
    urls.txt     http://evil.example/login ...   (canonical URLs, scheme included)

IP lists are collapsed with `ipaddress.collapse_addresses`: adjacent and overlapping blocks
merge (192.0.2.0/25 + 192.0.2.128/25 -> 192.0.2.0/24), and a host inside a listed block
disappears into it.  Entries that are canonical already (stixbus/core/canonical.py) are
written as they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from schemas.sinks import SubscriberSinks
from stixbus.core.sinks import Rendered, SinkView
from stixbus.core.sinks.current_set import Kind

LISTS = ("ipv4", "ipv6", "domains", "urls")


def aggregate(values: Iterable[str], version: int) -> list[str]:
    """The smallest set of CIDR blocks covering exactly `values` (hosts print bare)."""
    network = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    blocks = [network(value, strict=False) for value in values]
    return [
        str(block.network_address) if block.prefixlen == block.max_prefixlen else str(block)
        for block in ipaddress.collapse_addresses(blocks)  # type: ignore[type-var]
    ]


def _lines(values: Iterable[str]) -> bytes:
    text = "\n".join(values)
    return (text + "\n").encode() if text else b""


def render(view: SinkView, subscriber: SubscriberSinks) -> Rendered:
    lists = {
        "ipv4": aggregate(view.values.get(Kind.IPV4, ()), 4),
        "ipv6": aggregate(view.values.get(Kind.IPV6, ()), 6),
        "domains": list(view.values.get(Kind.DOMAIN, ())),
        "urls": list(view.values.get(Kind.URL, ())),
    }
    return Rendered(
        {f"{name}.txt": _lines(values) for name, values in lists.items()},
        {name: len(values) for name, values in lists.items()},
    )
