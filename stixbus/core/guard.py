"""The false-positive guard (pure): is an observable on a warninglist?

Blocking `8.8.8.8`, `google.com`, a documentation range or a member bank's own login domain at
the ISPs would be a catastrophe, so the route stage denies such objects with the reason
`warninglist:<name>` unless the agreement opts out of that list (docs/feedback.md,
"False-positive guard").  Lists come from two places:

- maintained lists: MISP warninglists (CC0, shipped by the `pymispwarninglists` package; the
  loader is stixbus/warninglists.py), reduced to the ones relevant to blocking (`CHOSEN_LISTS`);
- the org registry: each org's own `domains` and `networks` (list `member-<org id>`), which no
  agreement can opt out of.

`WarninglistIndex` is built once per (lists, registry) at worker start and answers in O(1) for
domains (set lookups, walking up parent domains for hostname lists) and O(log n) for addresses
(one bisect over the elementary intervals of every CIDR of every list).  Observables come from
the canonical pattern (stixbus/core/pattern.py, stixbus/core/canonical.py): there is no second
canonicaliser.
"""

from __future__ import annotations

import socket
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.agreement import MEMBER_LIST_PREFIX
from schemas.envelope import NormalizedObject, Receipt
from schemas.org import Registry
from stixbus.core.canonical import CanonicalError, canonical_domain, canonical_ip
from stixbus.core.pattern import pattern_observables

MEMBER_PREFIX = MEMBER_LIST_PREFIX

# The MISP lists the guard loads (directory names in the package), by what they protect.
CHOSEN_LISTS: dict[str, str] = {
    # public DNS resolvers
    "public-dns-v4": "resolvers",
    "public-dns-v6": "resolvers",
    "public-dns-hostname": "resolvers",
    # top domains
    "tranco10k": "top-domains",
    "cisco_top10k": "top-domains",
    "alexa": "top-domains",
    "google": "top-domains",
    "microsoft": "top-domains",
    # cloud and CDN ranges
    "amazon-aws": "cloud",
    "google-gcp": "cloud",
    "microsoft-azure": "cloud",
    "cloudflare": "cdn",
    "akamai": "cdn",
    "fastly": "cdn",
    # reserved and documentation ranges and names
    "rfc5735": "reserved",
    "rfc1918": "reserved",
    "rfc3849": "reserved",
    "rfc6598": "reserved",
    "rfc6761": "reserved",
    "ipv6-linklocal": "reserved",
    "multicast": "reserved",
    # hashes that match every empty file
    "empty-hashes": "hashes",
}
# Lists whose entries cover their subdomains although MISP types them `string`: RFC 6761
# reserves whole subtrees (example.com and everything under it).
_SUBTREE_STRING_LISTS = frozenset({"rfc6761"})

# Observable types the guard reads (others, e.g. email addresses and file names, never hit).
GUARDED_TYPES = frozenset({"domain-name", "url", "ipv4-addr", "ipv6-addr", "file"})

Hits = tuple[str, ...]  # list names, sorted; () = no hit
NO_HITS: Hits = ()


class ListInfo(NamedTuple):
    name: str
    title: str
    group: str  # resolvers, top-domains, cloud, cdn, reserved, hashes, member


class Hit(NamedTuple):
    list_name: str
    observable_type: str
    value: str


@dataclass(frozen=True, slots=True)
class _Ranges:
    """Disjoint elementary intervals: starts[i] <= x < starts[i+1] is on lists names[i]."""

    starts: tuple[int, ...]
    names: tuple[Hits, ...]

    def at(self, value: int) -> Hits:
        pos = bisect_right(self.starts, value) - 1
        return self.names[pos] if pos >= 0 else NO_HITS

    def overlapping(self, first: int, last: int) -> Hits:
        lo = max(bisect_right(self.starts, first) - 1, 0)
        hi = bisect_right(self.starts, last)
        found: set[str] = set()
        for names in self.names[lo:hi]:
            found.update(names)
        return tuple(sorted(found))


def _build_ranges(entries: Iterable[tuple[int, int, str]]) -> _Ranges:
    """Sweep the (first, last, name) ranges of every list into disjoint intervals."""
    events: dict[int, list[tuple[int, str]]] = {}
    for first, last, name in entries:
        events.setdefault(first, []).append((1, name))
        events.setdefault(last + 1, []).append((-1, name))
    active: dict[str, int] = {}
    interned: dict[Hits, Hits] = {(): ()}
    starts: list[int] = []
    names: list[Hits] = []
    for point in sorted(events):
        for delta, name in events[point]:
            count = active.get(name, 0) + delta
            if count:
                active[name] = count
            else:
                active.pop(name, None)
        current = tuple(sorted(active))
        current = interned.setdefault(current, current)
        if names and names[-1] is current:
            continue
        starts.append(point)
        names.append(current)
    return _Ranges(tuple(starts), tuple(names))


def _network(text: str) -> tuple[int, int, int] | None:
    """(version, first, last) of an address or CIDR block (host bits ignored); None when it is
    neither.  inet_pton, not ipaddress: index builds parse ~70k entries."""
    address, _, length = text.strip().partition("/")
    try:
        if ":" in address:
            version, bits, packed = 6, 128, socket.inet_pton(socket.AF_INET6, address)
        else:
            version, bits, packed = 4, 32, socket.inet_pton(socket.AF_INET, address)
    except OSError:
        return None
    if length:
        if not length.isdigit() or int(length) > bits:
            return None
        host = bits - int(length)
    else:
        host = 0
    first = int.from_bytes(packed, "big") >> host << host
    return version, first, first | ((1 << host) - 1)


class WarninglistIndex:
    """Every chosen list, precomputed for lookups; build once (`build_index`), share freely."""

    def __init__(
        self,
        lists: Mapping[str, ListInfo],
        exact: dict[str, Hits],
        subtree: dict[str, Hits],
        ipv4: _Ranges,
        ipv6: _Ranges,
    ) -> None:
        self.lists = dict(lists)
        self._exact = exact
        self._subtree = subtree
        self._ipv4 = ipv4
        self._ipv6 = ipv6
        self._pattern_cache: dict[str, tuple[Hit, ...]] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.lists)

    def domain(self, name: str) -> Hits:
        """Lists naming this canonical domain: exactly, or (hostname lists) a parent of it."""
        found = self._exact.get(name, NO_HITS)
        subtree = self._subtree
        if not subtree:
            return found
        label = name
        more: Hits = NO_HITS
        while True:
            hit = subtree.get(label)
            if hit is not None:
                more = hit if not more else tuple(sorted({*more, *hit}))
            dot = label.find(".")
            if dot < 0:
                break
            label = label[dot + 1 :]
        if not more:
            return found
        return more if not found else tuple(sorted({*found, *more}))

    def address(self, text: str) -> Hits:
        """Lists covering this canonical address, or overlapping this CIDR block."""
        if "/" not in text:
            try:
                if ":" in text:
                    value = int.from_bytes(socket.inet_pton(_AF6, text), "big")
                    embedded = _embedded_ipv4(value)
                    if embedded is not None:  # ::ffff:8.8.8.8 reaches 8.8.8.8
                        v4 = self._ipv4.at(embedded)
                        v6 = self._ipv6.at(value)
                        return v4 if not v6 else tuple(sorted({*v4, *v6}))
                    return self._ipv6.at(value)
                return self._ipv4.at(int.from_bytes(socket.inet_pton(_AF4, text), "big"))
            except OSError:
                return NO_HITS
        parsed = _network(text)
        if parsed is None:
            return NO_HITS
        version, first, last = parsed
        return (self._ipv4 if version == 4 else self._ipv6).overlapping(first, last)

    def observable(self, observable_type: str, value: str) -> Hits:
        """Lists this canonical observable value (as a pattern states it) is on."""
        if observable_type == "domain-name":
            return self.domain(value)
        if observable_type in ("ipv4-addr", "ipv6-addr"):
            return self.address(value)
        if observable_type == "url":
            host = _url_host(value)
            if host is None:
                return NO_HITS
            if ":" in host:
                return self.address(host)
            numeric = _url_ipv4(host)
            return self.domain(host) if numeric is None else self.address(numeric)
        if observable_type == "file":
            return self._exact.get(value.lower(), NO_HITS)
        return NO_HITS

    def pattern_hits(self, pattern: str) -> tuple[Hit, ...]:
        """Every (list, observable) hit of a STIX pattern (cached per pattern text)."""
        found = self._pattern_cache.get(pattern)
        if found is not None:
            return found
        hits: list[Hit] = []
        for observable_type, value in pattern_observables(pattern):
            if observable_type in GUARDED_TYPES:
                hits.extend(
                    Hit(n, observable_type, value) for n in self.observable(observable_type, value)
                )
        result = tuple(hits)
        if len(self._pattern_cache) >= _PATTERN_CACHE_LIMIT:
            self._pattern_cache.clear()
        self._pattern_cache[pattern] = result
        return result

    def object_hits(self, record: NormalizedObject) -> tuple[Hit, ...]:
        """The hits of one accepted object: an indicator's pattern, or an SCO's value."""
        pattern = record.canonical_pattern
        if pattern is None:
            raw = record.object.get("pattern")
            if isinstance(raw, str) and record.object.get("pattern_type", "stix") == "stix":
                pattern = raw
        if pattern is not None:
            return self.pattern_hits(pattern)
        value = record.object.get("value")
        if isinstance(value, str) and record.object_type in GUARDED_TYPES:
            canonical = _canonical_value(record.object_type, value)
            if canonical is not None:
                return tuple(
                    Hit(n, record.object_type, canonical)
                    for n in self.observable(record.object_type, canonical)
                )
        return ()

    def names_for(self, record: NormalizedObject) -> Hits:
        """The list names an object hits, sorted (what routing decisions depend on)."""
        hits = self.object_hits(record)
        if not hits:
            return NO_HITS
        return tuple(sorted({h.list_name for h in hits}))


_PATTERN_CACHE_LIMIT = 65536
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6


_MAPPED = 0xFFFF << 32  # ::ffff:0:0/96, IPv4-mapped
_NAT64 = 0x64FF9B << 96  # 64:ff9b::/96, the NAT64 well-known prefix (RFC 6052)


def _embedded_ipv4(value: int) -> int | None:
    """The IPv4 address an IPv6 address carries to the same host, if any."""
    prefix = value >> 32
    if prefix == _MAPPED >> 32 or prefix == _NAT64 >> 32:
        return value & 0xFFFFFFFF
    return None


def _url_ipv4(host: str) -> str | None:
    """The dotted quad a URL host stands for when it is an IPv4 address in any form a browser
    accepts (WHATWG URL: 1-4 parts, each decimal, 0x-hex or 0-led octal; the last part fills
    the remaining bytes), e.g. 134744072, 0x08080808, 010.010.010.010, 8.8.2056; else None."""
    if not host or not (host[-1].isdigit() or host[-1] in "abcdefx"):
        return None
    parts = host.rstrip(".").split(".")
    if len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part[0] == "0":
                numbers.append(int(part, 8))
            elif part.isdigit():
                numbers.append(int(part))
            else:
                return None
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for position, number in enumerate(head):
        value += number << (8 * (3 - position))
    return socket.inet_ntop(_AF4, value.to_bytes(4, "big"))


def _url_host(url: str) -> str | None:
    """The host of a canonical URL (scheme://[user@]host[:port]/...), brackets removed."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    rest = url[scheme_end + 3 :]
    for stop in "/?#":
        cut = rest.find(stop)
        if cut >= 0:
            rest = rest[:cut]
    rest = rest.rpartition("@")[2]
    if rest.startswith("["):
        close = rest.find("]")
        return rest[1:close] if close > 0 else None
    host = rest.rpartition(":")[0] if rest.count(":") == 1 else rest
    return host or None


def _canonical_value(observable_type: str, value: str) -> str | None:
    try:
        if observable_type == "domain-name":
            return canonical_domain(value).value
        if observable_type == "ipv4-addr":
            return canonical_ip(value, 4).value
        if observable_type == "ipv6-addr":
            return canonical_ip(value, 6).value
    except CanonicalError:
        return None
    return value


# --- building the index ---------------------------------------------------------------------


def build_index(
    misp_lists: Sequence[Mapping[str, Any]], registry: Registry | None
) -> WarninglistIndex:
    """The index over MISP warninglist documents (each a list.json as parsed, with the key
    `slug`: its directory name) and the registry's own domains and networks.

    MISP types: `cidr` entries are addresses or blocks, `hostname` entries cover their
    subdomains, `string` entries match exactly (RFC 6761's cover their subtree), `substring`
    and `regex` lists are not supported (none is chosen)."""
    lists: dict[str, ListInfo] = {}
    exact: dict[str, set[str]] = {}
    subtree: dict[str, set[str]] = {}
    ranges: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}

    def add_domain(table: dict[str, set[str]], entry: str, name: str) -> None:
        text = entry.strip().lstrip("*").lstrip(".")
        if not text:
            return
        try:
            canonical = canonical_domain(text).value
        except CanonicalError:
            return
        table.setdefault(canonical, set()).add(name)

    for document in misp_lists:
        name = str(document["slug"])
        kind = str(document["type"])
        lists[name] = ListInfo(
            name, str(document.get("name", name)), CHOSEN_LISTS.get(name, "other")
        )
        entries = [str(e) for e in document.get("list", [])]
        if kind == "cidr":
            for entry in entries:
                parsed = _network(entry)
                if parsed is not None:
                    ranges[parsed[0]].append((parsed[1], parsed[2], name))
        elif kind == "hostname" or name in _SUBTREE_STRING_LISTS:
            for entry in entries:
                add_domain(subtree, entry, name)
        elif kind == "string":
            for entry in entries:
                if entry.startswith("."):  # ".google.de": the subtree below that name
                    add_domain(subtree, entry, name)
                elif _HEX.issuperset(entry.lower()) and len(entry) >= 32:
                    exact.setdefault(entry.lower(), set()).add(name)
                else:
                    add_domain(exact, entry, name)
        else:
            raise ValueError(
                f"warninglist {name} has type {kind!r}, which the guard cannot match: "
                "choose lists of type cidr, hostname or string (stixbus/core/guard.py)"
            )
    if registry is not None:
        for org in registry.orgs:
            name = f"{MEMBER_PREFIX}{org.id}"
            if not org.domains and not org.networks:
                continue
            lists[name] = ListInfo(name, f"own domains and networks of {org.name}", "member")
            for domain in org.domains:
                add_domain(subtree, domain, name)
            for network in org.networks:
                parsed = _network(network)
                if parsed is not None:
                    ranges[parsed[0]].append((parsed[1], parsed[2], name))
    return WarninglistIndex(
        lists,
        _freeze(exact),
        _freeze(subtree),
        _build_ranges(ranges[4]),
        _build_ranges(ranges[6]),
    )


_HEX = frozenset("0123456789abcdef")


def _freeze(table: dict[str, set[str]]) -> dict[str, Hits]:
    interned: dict[Hits, Hits] = {}
    out: dict[str, Hits] = {}
    for key, names in table.items():
        hits = tuple(sorted(names))
        out[key] = interned.setdefault(hits, hits)
    return out


def guarded_receipt(
    receipt: Receipt, records: Iterable[NormalizedObject], index: WarninglistIndex
) -> tuple[Receipt, list[Hits]] | None:
    """The producer's receipt with a warning per accepted object that hits a list (routing
    denies it under every agreement that does not opt out of that list), and each such
    object's lists; None when nothing hit."""
    warnings: list[str] = []
    per_object: list[Hits] = []
    for record in records:
        hits = index.object_hits(record)
        if not hits:
            continue
        per_object.append(tuple(sorted({h.list_name for h in hits})))
        by_value: dict[tuple[str, str], list[str]] = {}
        for hit in hits:
            by_value.setdefault((hit.observable_type, hit.value), []).append(hit.list_name)
        for (observable_type, value), names in by_value.items():
            warnings.append(
                f"{record.object_id}: {observable_type} {value!r} is on warninglist(s) "
                f"{', '.join(sorted(set(names)))}: it is not delivered under agreements that do "
                'not opt out of them (docs/feedback.md, "False-positive guard")'
            )
    if not warnings:
        return None
    return receipt.model_copy(update={"warnings": [*receipt.warnings, *warnings]}), per_object
