"""A Zeek intel file (pure): `zeek/intel.dat`, read by the Intel framework
(`redef Intel::read_files += { ".../intel.dat" };`).

    #fields<TAB>indicator<TAB>indicator_type<TAB>meta.source
    evil.example<TAB>Intel::DOMAIN<TAB>stixbus:indicator--...

Types (Zeek's `Intel::Type`): ADDR for an address, SUBNET for a CIDR block, DOMAIN, URL (Zeek
matches URLs without the scheme: `evil.example/login`), FILE_HASH for MD5/SHA-1/SHA-256.
`meta.source` names the indicator, so a hit in intel.log leads back to the STIX object.
Fields are tab-separated: a value holding a tab or newline cannot occur (canonical values are
percent-encoded or hostnames), and is dropped if it ever does.
"""

from __future__ import annotations

from schemas.sinks import SubscriberSinks
from stixbus.core.sinks import Rendered, SinkView
from stixbus.core.sinks.current_set import Kind

HEADER = "#fields\tindicator\tindicator_type\tmeta.source"

_TYPE = {
    Kind.DOMAIN: "Intel::DOMAIN",
    Kind.URL: "Intel::URL",
    Kind.MD5: "Intel::FILE_HASH",
    Kind.SHA1: "Intel::FILE_HASH",
    Kind.SHA256: "Intel::FILE_HASH",
}


def _zeek(kind: Kind, value: str) -> tuple[str, str]:
    if kind in (Kind.IPV4, Kind.IPV6):
        return value, "Intel::SUBNET" if "/" in value else "Intel::ADDR"
    if kind is Kind.URL:
        return value.split("://", 1)[-1], _TYPE[kind]
    return value, _TYPE[kind]


def render(view: SinkView, subscriber: SubscriberSinks) -> Rendered:
    rows: dict[tuple[str, str], str] = {}
    for listed in view.active:
        for entry in listed.entries:
            indicator, indicator_type = _zeek(entry.kind, entry.value)
            if any(c in indicator for c in "\t\n\r"):
                continue
            rows.setdefault((indicator, indicator_type), f"stixbus:{listed.id}")
    lines = [HEADER] + [f"{i}\t{t}\t{source}" for (i, t), source in sorted(rows.items())]
    return Rendered({"zeek/intel.dat": ("\n".join(lines) + "\n").encode()}, {"zeek": len(rows)})
