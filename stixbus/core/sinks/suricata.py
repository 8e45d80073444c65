"""Suricata datasets (pure): `sha256.lst`, `md5.lst` (one lower-case hex digest a line) and
`domains.lst` (type string: each domain base64-encoded, as Suricata's dataset format wants
for strings), for rules such as

    alert dns any any -> any any (msg:"stixbus domain"; dns.query; \\
        dataset:isset,stixbus-domains,type string,load domains.lst; sid:1000001;)
    alert http any any -> any any (msg:"stixbus file"; filesha256; \\
        dataset:isset,stixbus-sha256,type sha256,load sha256.lst; sid:1000002;)

See https://docs.suricata.io/en/latest/rules/datasets.html (formats per type).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from schemas.sinks import SubscriberSinks
from stixbus.core.sinks import Rendered, SinkView
from stixbus.core.sinks.current_set import Kind


def _lines(values: Iterable[str]) -> bytes:
    text = "\n".join(values)
    return (text + "\n").encode() if text else b""


def render(view: SinkView, subscriber: SubscriberSinks) -> Rendered:
    sha256 = view.values.get(Kind.SHA256, [])
    md5 = view.values.get(Kind.MD5, [])
    domains = view.values.get(Kind.DOMAIN, [])
    encoded = [base64.b64encode(domain.encode()).decode("ascii") for domain in domains]
    return Rendered(
        {
            "suricata/sha256.lst": _lines(sha256),
            "suricata/md5.lst": _lines(md5),
            "suricata/domains.lst": _lines(encoded),
        },
        {
            "suricata-sha256": len(sha256),
            "suricata-md5": len(md5),
            "suricata-domains": len(domains),
        },
    )
