"""DNS Response Policy Zone of one subscriber (pure): its domains and URL hosts as QNAME
triggers, the subscriber's policy action, and an SOA serial that increases on every change.

    $ORIGIN isp-one.rpz.stixbus.
    @ 60 IN SOA localhost. hostmaster.localhost. 1764636000 300 60 2419200 60
    @ 60 IN NS localhost.
    evil.example 60 IN CNAME .        ; NXDOMAIN (the default action)
    *.evil.example 60 IN CNAME .      ; and every name under it (rpz_subdomains)

URL hosts are blocked as names (DNS cannot see a path: blocking the host of a phishing URL
blocks the whole site, which is what the ISP agreement asks).  Hosts that are IP literals
are not DNS names and go to the EDL ipv4/ipv6 lists instead.  `ixfr_steps` gives the
incremental transfer from an older serial out of the recorded diffs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from schemas.sinks import RpzAction, SubscriberSinks
from stixbus.core.sinks import Rendered, SinkView
from stixbus.core.sinks.current_set import Kind

TTL = 60
# SOA timers: refresh 5 min (NOTIFY makes changes arrive in seconds), retry 1 min, expire 28 days
# (a resolver that cannot reach the bus keeps blocking for four weeks), negative TTL 1 min.
SOA_TIMERS = (300, 60, 2419200, 60)
SERIAL_MODULUS = 2**32

_ACTION_TARGET = {
    RpzAction.NXDOMAIN: ".",
    RpzAction.NODATA: "*.",
    RpzAction.DROP: "rpz-drop.",
    RpzAction.TCP_ONLY: "rpz-tcp-only.",
    RpzAction.PASSTHRU: "rpz-passthru.",
}

Record = tuple[str, str]  # (owner name relative to the zone, "CNAME <target>")


def action_rdata(subscriber: SubscriberSinks) -> str:
    if subscriber.rpz_action is RpzAction.REDIRECT:
        assert subscriber.rpz_redirect_to is not None  # the schema requires it
        return f"CNAME {subscriber.rpz_redirect_to}"
    return f"CNAME {_ACTION_TARGET[subscriber.rpz_action]}"


def listed_names(domains: Iterable[str], urls: Iterable[str]) -> list[str]:
    """Domain names to block: the listed domains and the host of every listed URL that is a
    name (not an IP literal), sorted and de-duplicated."""
    names = set(domains)
    for url in urls:
        host = _host(url)
        if host and not _is_ip_literal(host):
            names.add(host)
    return sorted(names)


def _host(url: str) -> str | None:
    """The host of a canonical URL (stixbus/core/canonical.py: scheme://[userinfo@]host[:port]/
    ...), without urlsplit's cost; urlsplit for anything else."""
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return urlsplit(url).hostname
    authority = rest.partition("/")[0].rpartition("@")[2]
    if authority.startswith("["):
        return authority  # an IPv6 literal
    return authority.partition(":")[0].lower() or None


def _is_ip_literal(host: str) -> bool:
    return ":" in host or host.startswith("[") or host.replace(".", "").isdigit()


def _fits(name: str, zone: str) -> bool:
    """A DNS name is at most 255 octets on the wire (~253 characters of text, trailing dot
    dropped), labels at most 63: the trigger `*.name.<zone>` must fit."""
    if len(name) + len(zone) + 2 > 253:  # "*." + name + "." + zone, trailing dot dropped
        return False
    return len(name) <= 63 or max(map(len, name.split("."))) <= 63


def records(view: SinkView, subscriber: SubscriberSinks) -> frozenset[Record]:
    """The zone's policy records (without SOA and NS); memoised in the view."""
    memo_key = ("rpz.records", subscriber.zone, subscriber.rpz_action, subscriber.rpz_redirect_to,
                subscriber.rpz_subdomains)  # fmt: skip
    memoised = view.memo.get(memo_key)
    if memoised is not None:
        return memoised
    rdata = action_rdata(subscriber)
    found: set[Record] = set()
    for name in listed_names(view.values.get(Kind.DOMAIN, ()), view.values.get(Kind.URL, ())):
        if not _fits(name, subscriber.zone):
            continue  # longer than DNS allows under this zone: cannot be a trigger
        found.add((name, rdata))
        if subscriber.rpz_subdomains:
            found.add((f"*.{name}", rdata))
    result = frozenset(found)
    view.memo[memo_key] = result
    return result


def next_serial(previous: int | None, now_unix: int) -> int:
    """A serial greater than `previous` in RFC 1982 arithmetic: the Unix time when that is
    ahead, else previous + 1 (several changes in one second, or a clock set back)."""
    if previous is None:
        return now_unix % SERIAL_MODULUS
    ahead = (now_unix - previous) % SERIAL_MODULUS
    if 0 < ahead < 2**31:
        return now_unix % SERIAL_MODULUS
    return (previous + 1) % SERIAL_MODULUS


def soa_rdata(serial: int) -> str:
    refresh, retry, expire, minimum = SOA_TIMERS
    return f"localhost. hostmaster.localhost. {serial} {refresh} {retry} {expire} {minimum}"


def zone_text(zone: str, serial: int, policy: Iterable[Record]) -> str:
    lines = [
        f"; stixbus RPZ for this subscriber, serial {serial}; generated, do not edit",
        f"$ORIGIN {zone}",
        f"$TTL {TTL}",
        f"@ IN SOA {soa_rdata(serial)}",
        "@ IN NS localhost.",
    ]
    lines += [f"{owner} IN {rdata}" for owner, rdata in sorted(policy)]
    return "\n".join(lines) + "\n"


def render(view: SinkView, subscriber: SubscriberSinks) -> Rendered:
    policy = records(view, subscriber)
    names = sum(1 for owner, _ in policy if not owner.startswith("*."))
    return Rendered(
        {"rpz.zone": zone_text(subscriber.zone, view.serial, policy).encode()}, {"rpz": names}
    )


@dataclass(frozen=True)
class Diff:
    """One step of the zone's history: what changed from serial `old` to serial `new`."""

    old: int
    new: int
    deleted: frozenset[Record]
    added: frozenset[Record]


def diff(old_serial: int, old: frozenset[Record], new_serial: int, new: frozenset[Record]) -> Diff:
    return Diff(old_serial, new_serial, old - new, new - old)


def ixfr_steps(history: Sequence[Diff], client_serial: int, current: int) -> list[Diff] | None:
    """The diffs that take a secondary from `client_serial` to `current` (RFC 1995), [] when it
    is up to date, None when the history does not reach back that far (send the whole zone)."""
    if client_serial == current:
        return []
    for start, step in enumerate(history):
        if step.old == client_serial:
            steps = list(history[start:])
            chained = all(a.new == b.old for a, b in itertools.pairwise(steps))
            return steps if chained and steps[-1].new == current else None
    return None


def parse_zone_text(text: str) -> tuple[int, frozenset[Record]] | None:
    """Serial and policy records of a zone `zone_text` wrote (to serve the last published zone
    straight after a restart); None when the text is not one of ours."""
    serial: int | None = None
    found: set[Record] = set()
    for line in text.splitlines():
        if not line or line.startswith((";", "$")):
            continue
        owner, _, rest = line.partition(" IN ")
        kind, _, rdata = rest.partition(" ")
        if owner == "@" and kind == "SOA":
            fields = rdata.split()
            if len(fields) != 7 or not fields[2].isdigit():
                return None
            serial = int(fields[2])
        elif owner != "@" and kind == "CNAME" and rdata:
            found.add((owner, f"CNAME {rdata}"))
    return None if serial is None else (serial, frozenset(found))
